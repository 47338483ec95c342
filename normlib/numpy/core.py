"""The one core: normalize over a set of axes, and its backward. NumPy, float32 or float64."""
import os
import warnings
from functools import partial
from math import prod
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .._threads import executor

# Trailing-axes norms cut x into parts of rows of about this many bytes and normalize the parts on
# up to THREADS threads at once: the cores this process may use, at most 8 (measured on 2 cores
# only). Parts of 4 MiB ran fastest on a 2-core machine (1 MiB parts: 1.3x slower, each thread
# waiting more often for the GIL between passes).
PART_BYTES = 2 ** 22
THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else os.cpu_count() or 1)
# Parameter tiles hold at least this many values: a pass then covers many rows per inner loop.
TILE_VALUES = 2 ** 14
# Row sums run as BLAS dots over at most this many values each (see `_rowdot`).
DOT_MAX = 8192


class NormCache(NamedTuple):
    """What backward needs: the input and its statistics; `axes` is None for given statistics.

    x is kept by reference, not copied (as torch saves its input): change it in place between
    forward and backward and the gradient is wrong.
    """
    x: np.ndarray               # input in the compute dtype
    mean: np.ndarray            # keepdims shape (zeros when center=False)
    rstd: np.ndarray            # 1 / sqrt(var + eps), keepdims shape
    axes: Optional[Tuple[int, ...]]
    center: bool
    var: np.ndarray             # biased variance (mean square when center=False), keepdims shape

    @property
    def xhat(self):
        """(x - mean) * rstd, recomputed: saving it too would cost a second array as large as x."""
        return (self.x - self.mean) * self.rstd if self.center else self.x * self.rstd


def compute_dtype(dtype):
    """Statistics in float64 for float64 input, float32 for everything else (float16 included)."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def check_real(x):
    """Refuse complex, bool and non-numeric input, as torch does (a cast drops imaginary parts)."""
    real = np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
    if x.dtype == np.bool_ or not real:
        raise ValueError(f"normlib: expected real floating (or integer) input, got dtype "
                         f"{x.dtype}; pass real numbers, e.g. x.astype(np.float32)")


def check_grad_shape(name, grad, shape):
    """Raise ValueError unless an upstream gradient has the forward input's shape (no reshape)."""
    if grad.shape != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(grad.shape)}, expected {tuple(shape)} (the "
                         f"forward input's and output's); pass the gradient of the output itself")


def _in_compute_dtype(x, weight, bias):
    """x, weight and bias as arrays in x's compute dtype (None stays None)."""
    x = np.asarray(x)
    check_real(x)
    x = x.astype(compute_dtype(x.dtype), copy=False)
    return (x,) + tuple(None if p is None else np.asarray(p, x.dtype) for p in (weight, bias))


def normalize(x, axes, eps=1e-5, center=True, weight=None, bias=None):
    """y = xhat * weight + bias with xhat = (x - mean) / sqrt(var + eps) over `axes`.

    center=False leaves the mean out: xhat = x / sqrt(mean(x²) + eps) (RMSNorm). Two passes: the
    mean first, then the mean of squared deviations, never E[x²] - E[x]², which cancels
    catastrophically in float32 when |mean| >> std. `weight` and `bias` broadcast against x and may
    be None (left out): normalize(x, axes) returns (xhat, cache).
    """
    x, weight, bias = _in_compute_dtype(x, weight, bias)
    axes = tuple(int(a) % max(x.ndim, 1) for a in axes)
    lead = x.ndim - len(axes)
    if x.size and 0 < lead and sorted(axes) == list(range(lead, x.ndim)) and x.flags.c_contiguous:
        y, mean, var, rstd = _normalize_trailing(x, lead, eps, center, weight, bias)
    else:
        y, mean, var, rstd = _normalize_any(x, axes, eps, center, weight, bias)
    return y, NormCache(x, mean, rstd, axes, center, var)


def _affine_(y, weight, bias):
    """y <- y * weight + bias in place; either may be None."""
    if weight is not None:
        y *= weight
    if bias is not None:
        y += bias
    return y


def _normalize_any(x, axes, eps, center, weight, bias):
    """Any axes, whole-array passes: (y, mean, var, rstd), statistics in keepdims shape."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty reduction gives nan, like torch
        mean = x.mean(axis=axes, keepdims=True) if center else np.zeros((1,) * x.ndim, x.dtype)
        y = x - mean                                       # x - mean, scaled in place below
        var = np.square(y).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y *= rstd
    return _affine_(y, weight, bias), mean, var, rstd


def _rowdot(a, b, out):
    """out[i] = Σ_j a[i, j] * b[i, j] for (rows, n) arrays (b may be (1, n)); no full-size temp.

    BLAS dots, 3x faster than NumPy's pairwise sums, over column chunks of at most DOT_MAX values:
    OpenBLAS hands longer dots to a thread pool of its own, which then competes with ours. Their
    float32 partial sums are less exact (mean of 2^20 values 1e3 + 0.1·z: off by 9e-5, pairwise
    3e-5) but far inside what the offset test allows (rows of 2^18 such values: xhat off by 5e-4
    where 1e-2 is the bound).
    """
    _dot(a[:, :DOT_MAX], b[:, :DOT_MAX], out=out)
    for s in range(DOT_MAX, a.shape[1], DOT_MAX):
        out += _dot(a[:, s:s + DOT_MAX], b[:, s:s + DOT_MAX])
    return out


# Row-wise dot products: np.vecdot (NumPy >= 2), else einsum's sum of products.
_dot = getattr(np, "vecdot", None) or partial(np.einsum, "ij,ij->i")


def _normalize_trailing(x, lead, eps, center, weight, bias):
    """The reduced axes are the last ones (LayerNorm, GroupNorm, InstanceNorm, RMSNorm).

    x is viewed as (rows, n), one statistic per row, and cut into parts of rows of about PART_BYTES
    that several threads normalize at once (`_run_parts`). The parameters are tiled once to a
    whole number of rows (`_tile_rows`), so the affine step is a plain elementwise pass too.
    """
    rows, n = prod(x.shape[:lead]), prod(x.shape[lead:])
    x2 = x.reshape(rows, n)
    y2 = np.empty_like(x2)
    # the parameters repeat every `period` rows: they are constant over leading axes 0..j-1
    j = min((_first_varying_axis(p, x.ndim, lead) for p in (weight, bias) if p is not None),
            default=lead)
    period = prod(x.shape[j:lead])
    repeats = max(1, min(rows // period, -(-TILE_VALUES // (period * n))))
    tiles = [None if p is None else _tile_rows(p, x.shape, j, n, repeats) for p in (weight, bias)]
    mean, var, rstd = (np.zeros(rows, x.dtype) for _ in range(3))

    def normalize_part(r):
        _normalize_rows(x2[r], y2[r], mean[r], var[r], rstd[r], eps, center, *tiles)

    _run_parts(normalize_part, rows, period * repeats, x2.nbytes)
    stat_shape = x.shape[:lead] + (1,) * (x.ndim - lead)
    return (y2.reshape(x.shape), mean.reshape(stat_shape), var.reshape(stat_shape),
            rstd.reshape(stat_shape))


def _normalize_rows(x, y, mean, var, rstd, eps, center, weight, bias):
    """One part: rows x (m, n) normalized into y, statistics (m,) written in place; weight and bias
    are (p, n) tiles that repeat every p rows (or None)."""
    n = x.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):     # per thread: NaN rows give NaN
        if center:
            _rowdot(x, np.ones((1, n), x.dtype), out=mean)
            mean /= n                                                   # m
            np.subtract(x, mean[:, None], out=y)                        # x - mean
        dev = y if center else x                  # deviations from the mean (or from 0: RMSNorm)
        _rowdot(dev, dev, out=var)
        var /= n                                                        # m
        np.divide(1.0, np.sqrt(var + eps), out=rstd)                    # m
        np.multiply(dev, rstd[:, None], out=y)                          # xhat
        tile = weight if weight is not None else bias
        if tile is not None:
            whole = len(y) // len(tile) * len(tile)    # rows [0, whole) as (-1, p, n); the rest
            _affine_(y[:whole].reshape(-1, len(tile), n), weight, bias)
            rest = slice(len(y) - whole)
            _affine_(y[whole:], *(None if t is None else t[rest] for t in (weight, bias)))


def _run_parts(fn, rows, unit, nbytes):
    """fn(rows slice) over parts of about PART_BYTES covering range(rows), each part but the last a
    multiple of `unit` rows, on up to THREADS threads: NumPy releases the GIL inside every ufunc
    on a large array, so the parts' passes run in parallel. Small inputs run on the caller's thread.
    """
    units = -(-rows // unit)                          # whole tiles of rows, the last maybe partial
    threads = max(1, min(THREADS, units, nbytes // PART_BYTES))
    count = threads * max(1, round(nbytes / (threads * PART_BYTES)))         # parts
    step = -(-units // count) * unit
    parts = [slice(s, min(s + step, rows)) for s in range(0, rows, step)]
    groups = [parts[i::threads] for i in range(min(threads, len(parts)))]

    def run(group):
        for r in group:
            fn(r)
    futures = [executor(THREADS - 1).submit(run, g) for g in groups[1:]]
    run(groups[0])
    for f in futures:
        f.result()


def _first_varying_axis(p, ndim, lead):
    """The first of the leading axes along which parameter p (broadcast to ndim) is not constant."""
    shape = (1,) * (ndim - p.ndim) + p.shape
    return next((a for a in range(lead) if shape[a] != 1), lead)


def _tile_rows(p, shape, j, n, repeats):
    """p broadcast to one period of rows (axes j.. of x as (period, n)), stacked `repeats` times."""
    p = p.reshape((1,) * (len(shape) - p.ndim) + p.shape)[(0,) * j]
    period = np.broadcast_to(p, shape[j:]).reshape(-1, n)                       # period, n
    tile = np.empty((repeats,) + period.shape, p.dtype)
    tile[...] = period                                # a broadcast copy (np.tile is 15x slower)
    return tile.reshape(-1, n)                                                  # repeats·period, n


def normalize_with_stats(x, mean, var, eps=1e-5, weight=None, bias=None):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with given (broadcastable) statistics.

    Eval-mode BatchNorm and InstanceNorm with running statistics. Returns (y, cache).
    """
    x, weight, bias = _in_compute_dtype(x, weight, bias)
    mean = np.asarray(mean, dtype=x.dtype)
    var = np.asarray(var, dtype=x.dtype)
    rstd = 1.0 / np.sqrt(var + eps)   # var is a variance already: never square it again
    y = (x - mean) * rstd
    return _affine_(y, weight, bias), NormCache(x, mean, rstd, None, True, var)


def normalize_backward(dxhat, cache, xhat=None):
    """dx from dxhat. With n values per statistic (mean over `axes` written as <.>):

        center:    dx = rstd * (dxhat - <dxhat> - xhat * <dxhat * xhat>)
        no center: dx = rstd * (dxhat - xhat * <dxhat * xhat>)
        fixed statistics (axes None): dx = rstd * dxhat

    `xhat` saves recomputing cache.xhat when the caller has it already.
    """
    rstd, axes = cache.rstd, cache.axes
    dxhat = np.asarray(dxhat, dtype=rstd.dtype)
    check_grad_shape("normalize_backward: dxhat", dxhat, cache.x.shape)
    if axes is None or dxhat.size == 0:          # fixed statistics, or nothing to average over
        return dxhat * rstd
    xhat = cache.xhat if xhat is None else xhat
    proj = (dxhat * xhat).mean(axis=axes, keepdims=True)        # keepdims shape
    if cache.center:
        return rstd * (dxhat - dxhat.mean(axis=axes, keepdims=True) - xhat * proj)
    return rstd * (dxhat - xhat * proj)
