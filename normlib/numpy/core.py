"""The one core: normalize over a set of axes, and its backward. NumPy, float32 or float64."""
import warnings
from math import prod
from typing import NamedTuple, Optional, Tuple

import numpy as np

# Trailing-axes norms walk x in blocks of about this many bytes, so that every pass over a block
# (mean, deviations, variance, scale, affine) finds it in the L2 cache: x crosses memory once.
BLOCK_BYTES = 2 ** 18


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


def _in_compute_dtype(x, weight, bias):
    """x, weight and bias as arrays in x's compute dtype (None stays None)."""
    x = np.asarray(x)
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


def _rowdot(a, b):
    """Σ_j a[i, j] * b[i, j] per row of (rows, n) arrays (b may be (1, n)), with no temporary.

    A BLAS dot per row, 3x faster than NumPy's pairwise sum. Its float32 partial sums are less
    exact (mean of 2^20 values 1e3 + 0.1·z: off by 2e-4, pairwise 5e-5) but far inside what the
    offset test allows: xhat off by 2e-3 where 1e-2 is the bound.
    """
    return np.vecdot(a, b) if hasattr(np, "vecdot") else np.einsum("ij,ij->i", a, b)


def _normalize_trailing(x, lead, eps, center, weight, bias):
    """The reduced axes are the last ones (LayerNorm, GroupNorm, InstanceNorm, RMSNorm).

    x is viewed as (rows, n), one statistic per row, and walked in blocks of rows of about
    BLOCK_BYTES: each block goes through all its passes while it is in cache. The parameters are
    tiled once to a block's shape, so the affine step is a plain elementwise pass too.
    """
    rows, n = prod(x.shape[:lead]), prod(x.shape[lead:])
    x2 = x.reshape(rows, n)
    y2 = np.empty_like(x2)
    # the parameters repeat every `period` rows: they are constant over leading axes 0..j-1
    j = min((_first_varying_axis(p, x.ndim, lead) for p in (weight, bias) if p is not None),
            default=lead)
    period = prod(x.shape[j:lead])
    k = min(rows, max(period, BLOCK_BYTES // (n * x.itemsize) // period * period))
    tiles = [None if p is None else _tile_rows(p, x.shape, j, n, k // period)
             for p in (weight, bias)]
    mean, var, rstd = (np.zeros(rows, x.dtype) for _ in range(3))
    ones = np.ones((1, n), x.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in range(0, rows, k):                   # s is a multiple of k, so of `period`
            xb, yb, r = x2[s:s + k], y2[s:s + k], slice(s, s + k)
            if center:
                mean[r] = _rowdot(xb, ones) / n
                np.subtract(xb, mean[r, None], out=yb)
                var[r] = _rowdot(yb, yb) / n
            else:
                var[r] = _rowdot(xb, xb) / n
            rstd[r] = 1.0 / np.sqrt(var[r] + eps)
            np.multiply(yb if center else xb, rstd[r, None], out=yb)
            _affine_(yb, *(None if t is None else t[:len(yb)] for t in tiles))
    stat_shape = x.shape[:lead] + (1,) * (x.ndim - lead)
    return (y2.reshape(x.shape), mean.reshape(stat_shape), var.reshape(stat_shape),
            rstd.reshape(stat_shape))


def _first_varying_axis(p, ndim, lead):
    """The first of the leading axes along which parameter p (broadcast to ndim) is not constant."""
    shape = (1,) * (ndim - p.ndim) + p.shape
    return next((a for a in range(lead) if shape[a] != 1), lead)


def _tile_rows(p, shape, j, n, repeats):
    """p broadcast to one period of rows (axes j.. of x as (period, n)), stacked `repeats` times."""
    p = p.reshape((1,) * (len(shape) - p.ndim) + p.shape)[(0,) * j]
    return np.tile(np.broadcast_to(p, shape[j:]).reshape(-1, n), (repeats, 1))


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
    if axes is None:
        return dxhat * rstd
    xhat = cache.xhat if xhat is None else xhat
    proj = (dxhat * xhat).mean(axis=axes, keepdims=True)        # keepdims shape
    if cache.center:
        return rstd * (dxhat - dxhat.mean(axis=axes, keepdims=True) - xhat * proj)
    return rstd * (dxhat - xhat * proj)
