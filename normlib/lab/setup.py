"""Seeds, threads, device and the progress-bar switch every chapter's setup cell uses."""
import os
import random

import numpy as np
import torch


def seed(s=0):
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


_seed_all = seed   # setup() takes an argument named seed


def device():
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_quiet():
    """True in CI and in the book build (they set NORMBOOK_QUIET=1 or CI): no progress bars there."""
    return bool(os.environ.get("NORMBOOK_QUIET") or os.environ.get("CI"))


def progress(iterable, **kwargs):
    """tqdm progress bar when run interactively; the bare iterable in CI and the built book."""
    if is_quiet():
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)


def setup(seed=0, threads=2):
    """The chapter setup: seeds, `threads` CPU threads (predictable on 2 cores), plot style.
    Returns the device to use."""
    from .plot import style
    _seed_all(seed)
    torch.set_num_threads(threads)
    style()
    return device()
