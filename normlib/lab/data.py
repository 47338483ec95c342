"""Data sets made in code or shipped inside packages, and recorded results shipped inside normlib:
nothing is downloaded."""
import json
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Data:
    """Train and test tensors on one device."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_classes(self):
        return int(self.y_train.max()) + 1

    def to(self, device):
        """The same data on another device."""
        return Data(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))


def digits(images=False, test_fraction=0.25, seed=0, device=None, dtype=torch.float32):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), split at random.

    Pixels are scaled from 0..16 to 0..1. `images=True` gives (N, 1, 8, 8), else (N, 64).
    """
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = torch.tensor(bunch.data / 16.0, dtype=dtype)
    y = torch.tensor(bunch.target, dtype=torch.long)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    data = Data(x[train], y[train], x[test], y[test])
    return data.to(device) if device is not None else data


def recorded(name):
    """A result recorded on a machine the reader may not have (a GPU benchmark, say), shipped
    inside normlib as normlib/lab/recorded/<name>.json: a dict, read without any download."""
    from importlib.resources import files
    path = files("normlib.lab").joinpath("recorded", f"{name}.json")
    if not path.is_file():
        known = sorted(p.name[:-5] for p in files("normlib.lab").joinpath("recorded").iterdir()
                       if p.name.endswith(".json"))
        raise ValueError(f"recorded: no result named {name!r}; normlib ships {known}")
    return json.loads(path.read_text())


def batches(n, batch_size, generator=None, drop_last=True, device=None):
    """Endless shuffled index batches over range(n): one permutation per epoch."""
    while True:
        order = torch.randperm(n, generator=generator).to(device or "cpu")
        stop = n - batch_size + 1 if drop_last else n
        for i in range(0, max(stop, 1), batch_size):
            yield order[i:i + batch_size]


def gaussian_blobs(n, dim, num_classes, spread=1.0, seed=0):
    """A small synthetic classification set: num_classes Gaussian clusters in `dim` dimensions."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim)) * 3
    y = rng.integers(num_classes, size=n)
    x = centers[y] + spread * rng.normal(size=(n, dim))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)
