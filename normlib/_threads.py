"""The one thread pool of normlib's CPU work: the parts of the NumPy reference
(`normlib.numpy.core._run_parts`) and the fused kernels of normlib.torch (`numba_norm._run`).
The caller of either runs the first piece itself and hands the others to this pool."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_POOL = []                   # the ThreadPoolExecutor of this process, once a call needed one
_POOL_LOCK = threading.Lock()


def executor(workers):
    """This process's thread pool, made on first use, with room for at least `workers` threads."""
    with _POOL_LOCK:
        if not _POOL or _POOL[0]._max_workers < workers:
            if _POOL:
                _POOL.pop().shutdown(wait=False)
            _POOL.append(ThreadPoolExecutor(max(workers, 1), thread_name_prefix="normlib"))
        return _POOL[0]


def _forget_pool():
    """In a forked child (DataLoader workers, multiprocessing's fork) the parent's pool threads do
    not exist, and work handed to them would wait forever: the child makes a pool of its own."""
    _POOL.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
