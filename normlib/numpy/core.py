"""The one core: normalize over a set of axes, and its backward. NumPy, float32 or float64."""
import warnings
from typing import NamedTuple, Optional, Tuple

import numpy as np


class NormCache(NamedTuple):
    """What backward needs. `axes` is None when the statistics were given (BatchNorm in eval)."""
    xhat: np.ndarray            # same shape as x, compute dtype
    rstd: np.ndarray            # 1 / sqrt(var + eps), keepdims shape
    axes: Optional[Tuple[int, ...]]
    center: bool
    mean: np.ndarray            # keepdims shape (zeros when center=False)
    var: np.ndarray             # biased variance (mean square when center=False), keepdims shape


def compute_dtype(dtype):
    """Statistics in float64 for float64 input, float32 for everything else (float16 included)."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def normalize(x, axes, eps=1e-5, center=True):
    """xhat = (x - mean) / sqrt(var + eps) over `axes` (RMS instead when center=False).

    Two passes: the mean first, then the mean of squared deviations, never E[x²] - E[x]², which
    cancels catastrophically in float32 when |mean| >> std. Returns (xhat, cache).
    """
    x = np.asarray(x)
    x = x.astype(compute_dtype(x.dtype), copy=False)
    axes = tuple(int(a) % max(x.ndim, 1) for a in axes)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty reduction gives nan, like torch
        mean = x.mean(axis=axes, keepdims=True) if center else np.zeros((1,) * x.ndim, x.dtype)
        xhat = x - mean                                    # x - mean, scaled in place below
        var = np.square(xhat).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat *= rstd
    return xhat, NormCache(xhat, rstd, axes, center, mean, var)


def normalize_with_stats(x, mean, var, eps=1e-5):
    """xhat = (x - mean) / sqrt(var + eps) with given (broadcastable) statistics: eval-mode BatchNorm."""
    x = np.asarray(x)
    x = x.astype(compute_dtype(x.dtype), copy=False)
    mean = np.asarray(mean, dtype=x.dtype)
    var = np.asarray(var, dtype=x.dtype)
    rstd = 1.0 / np.sqrt(var + eps)   # var is a variance already: never square it again
    xhat = (x - mean) * rstd
    return xhat, NormCache(xhat, rstd, None, True, mean, var)


def normalize_backward(dxhat, cache):
    """dx from dxhat. With n values per statistic (mean over `axes` written as <.>):

        center:    dx = rstd * (dxhat - <dxhat> - xhat * <dxhat * xhat>)
        no center: dx = rstd * (dxhat - xhat * <dxhat * xhat>)
        fixed statistics (axes None): dx = rstd * dxhat
    """
    xhat, rstd, axes = cache.xhat, cache.rstd, cache.axes
    dxhat = np.asarray(dxhat, dtype=xhat.dtype)
    if axes is None:
        return dxhat * rstd
    proj = (dxhat * xhat).mean(axis=axes, keepdims=True)        # keepdims shape
    if cache.center:
        return rstd * (dxhat - dxhat.mean(axis=axes, keepdims=True) - xhat * proj)
    return rstd * (dxhat - xhat * proj)
