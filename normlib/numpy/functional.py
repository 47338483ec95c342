"""Functional norms in NumPy with the arguments of torch.nn.functional; each returns (y, cache).

Every function is a choice of axes (from `normlib.axes`) around the one core in `core.py`, which
also applies the affine step y = weight * xhat + bias. Each has `<name>_backward(dy, cache)`.
"""
from math import prod
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .. import axes as ax
from .core import (NormCache, check_grad_shape, compute_dtype, normalize, normalize_backward,
                   normalize_with_stats)

__all__ = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
           "batch_norm_backward", "layer_norm_backward", "group_norm_backward",
           "instance_norm_backward", "rms_norm_backward"]


class AffineCache(NamedTuple):
    """The core's cache plus what the affine step and any reshape need."""
    norm: NormCache
    weight: Optional[np.ndarray]
    weight_grad_dtype: Optional[np.dtype]   # dweight's dtype (the weight's); None: no weight
    bias_grad_dtype: Optional[np.dtype]     # dbias's dtype (the bias's); None: no bias
    param_shape: Tuple[int, ...]      # weight broadcast against x, e.g. (1, C, 1, 1)
    feature_shape: Tuple[int, ...]    # weight's own shape, e.g. (C,) or normalized_shape
    x_shape: Tuple[int, ...]
    x_dtype: np.dtype


def _out_dtype(x):
    """Output in the input's dtype when it is floating (float16 in, float16 out), else the compute dtype."""
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(compute_dtype(x.dtype))


def _param(p, param_shape):
    """A weight or bias reshaped to broadcast against the normalized input (None stays None)."""
    return None if p is None else np.reshape(p, param_shape)


def _channel_shape(shape):
    """(1, C, 1, ..., 1): per-channel parameters broadcast against (N, C, *)."""
    return (1, shape[1]) + (1,) * (len(shape) - 2)


def _grad_dtype(p, x):
    """A parameter's gradient dtype: its own when it is a floating array (as torch), else x's."""
    if p is None:
        return None
    own = getattr(p, "dtype", None)
    return own if own is not None and np.issubdtype(own, np.floating) else _out_dtype(x)


def _finish(x, y, norm_cache, weight, bias, param_shape, feature_shape):
    """Cast back to the input dtype; the cache for backward."""
    cache = AffineCache(norm_cache, weight, _grad_dtype(weight, x), _grad_dtype(bias, x),
                        param_shape, feature_shape, x.shape, _out_dtype(x))
    return y.reshape(x.shape).astype(cache.x_dtype, copy=False), cache


def _check_running(name, running_mean, running_var, momentum, updates):
    """A float momentum; both running buffers or neither, writable floating arrays if `updates`.

    Checked before anything is computed, so a bad call leaves every buffer as it was.
    """
    ax.check_running_pair(name, running_mean, running_var)
    if momentum is None:
        raise ValueError(f"{name}: momentum=None (the cumulative average) is a module option, as in "
                         f"torch; pass a float, or use the BatchNorm/InstanceNorm module")
    if not updates or running_mean is None:
        return
    for what, buf in [("running_mean", running_mean), ("running_var", running_var)]:
        if not (isinstance(buf, np.ndarray) and np.issubdtype(buf.dtype, np.floating)
                and buf.flags.writeable):
            got = f"ndarray of {buf.dtype}" if isinstance(buf, np.ndarray) else type(buf).__name__
            raise ValueError(f"{name}: {what} is updated in place, so it must be a writable floating "
                             f"NumPy array, got {got}; pass e.g. np.zeros(C, np.float32)")


def _update_running(running, batch_stat, momentum):
    """running <- (1 - momentum) * running + momentum * batch_stat, in place (PyTorch's convention)."""
    running[...] = (1.0 - momentum) * running + momentum * batch_stat.astype(running.dtype)


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, training=True,
               momentum=0.1, eps=1e-5):
    """BatchNorm over (N, C, *): statistics per channel over N and the spatial axes.

    Training normalizes with the biased batch variance and, when running buffers are given, updates
    them in place: running_mean <- (1-momentum)·running_mean + momentum·mean_B and running_var the
    same with the *unbiased* variance n/(n-1)·var_B, as PyTorch does. Eval uses the running buffers.
    """
    x = np.asarray(x)
    axes = ax.batch_norm_axes(x.shape)
    c = x.shape[1]
    for what, p in [("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)]:
        ax.check_param("batch_norm", what, None if p is None else np.shape(p), (c,))
    _check_running("batch_norm", running_mean, running_var, momentum, training)
    pshape = _channel_shape(x.shape)
    if training:
        ax.check_batch_stats(x.shape)
        y, cache = normalize(x, axes, eps, weight=_param(weight, pshape),
                             bias=_param(bias, pshape))
        if running_mean is not None and x.size > 0:   # an empty batch leaves the buffers alone
            n = ax.reduced_count(x.shape, axes)
            _update_running(running_mean, cache.mean.reshape(c), momentum)
            _update_running(running_var, cache.var.reshape(c) * n / (n - 1), momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: training=False normalizes with running_mean and running_var; "
                             "pass both, or use training=True for batch statistics")
        y, cache = normalize_with_stats(x, np.reshape(running_mean, pshape),
                                        np.reshape(running_var, pshape), eps,
                                        _param(weight, pshape), _param(bias, pshape))
    return _finish(x, y, cache, weight, bias, pshape, (c,))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """LayerNorm: statistics per sample over the last len(normalized_shape) axes."""
    x = np.asarray(x)
    axes = ax.layer_norm_axes(x.shape, normalized_shape)
    nshape = ax.normalized_shape_tuple(normalized_shape)
    for what, p in [("weight", weight), ("bias", bias)]:
        ax.check_param("layer_norm", what, None if p is None else np.shape(p), nshape)
    pshape = (1,) * (x.ndim - len(nshape)) + nshape
    y, cache = normalize(x, axes, eps, weight=_param(weight, pshape), bias=_param(bias, pshape))
    return _finish(x, y, cache, weight, bias, pshape, nshape)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """RMSNorm: x / sqrt(mean(x²) + eps) per sample over the last axes; no centering, no bias.

    eps=None means the machine epsilon of the compute dtype (float32 for float16 input), as torch.
    """
    x = np.asarray(x)
    axes = ax.layer_norm_axes(x.shape, normalized_shape, name="RMSNorm")
    nshape = ax.normalized_shape_tuple(normalized_shape)
    ax.check_param("rms_norm", "weight", None if weight is None else np.shape(weight), nshape)
    if eps is None:
        eps = float(np.finfo(compute_dtype(x.dtype)).eps)
    pshape = (1,) * (x.ndim - len(nshape)) + nshape
    y, cache = normalize(x, axes, eps, center=False, weight=_param(weight, pshape))
    return _finish(x, y, cache, weight, None, pshape, nshape)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """GroupNorm: channels split into `num_groups` groups; statistics per sample and group."""
    x = np.asarray(x)
    ax.group_norm_shape(x.shape, num_groups)
    n, c, g = x.shape[0], x.shape[1], num_groups
    for what, p in [("weight", weight), ("bias", bias)]:
        ax.check_param("group_norm", what, None if p is None else np.shape(p), (c,))
    view, gshape = (n, g, c // g, prod(x.shape[2:])), (1, g, c // g, 1)   # reduce axes 2, 3
    y, cache = normalize(x.reshape(view), (2, 3), eps, weight=_param(weight, gshape),
                         bias=_param(bias, gshape))
    return _finish(x, y, cache, weight, bias, _channel_shape(x.shape), (c,))


def instance_norm(x, weight=None, bias=None, eps=1e-5, running_mean=None, running_var=None,
                  use_input_stats=True, momentum=0.1):
    """InstanceNorm: statistics per sample and channel over the spatial axes.

    With running buffers and use_input_stats, they move towards the batch average of the per-instance
    mean and unbiased variance (PyTorch's rule); use_input_stats=False normalizes with them instead.
    """
    x = np.asarray(x)
    axes = ax.instance_norm_axes(x.shape)
    c = x.shape[1]
    for what, p in [("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)]:
        ax.check_param("instance_norm", what, None if p is None else np.shape(p), (c,))
    _check_running("instance_norm", running_mean, running_var, momentum, use_input_stats)
    pshape = _channel_shape(x.shape)
    if use_input_stats:
        ax.check_instance_stats(x.shape)
        y, cache = normalize(x, axes, eps, weight=_param(weight, pshape),
                             bias=_param(bias, pshape))
        if running_mean is not None and x.size > 0:   # an empty batch leaves the buffers alone
            n = ax.reduced_count(x.shape, axes)
            mean = cache.mean.reshape(x.shape[:2]).mean(axis=0)
            var = (cache.var.reshape(x.shape[:2]) * n / (n - 1)).mean(axis=0)
            _update_running(running_mean, mean, momentum)
            _update_running(running_var, var, momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm: use_input_stats=False needs running_mean and running_var")
        y, cache = normalize_with_stats(x, np.reshape(running_mean, pshape),
                                        np.reshape(running_var, pshape), eps,
                                        _param(weight, pshape), _param(bias, pshape))
    return _finish(x, y, cache, weight, bias, pshape, (c,))


def _sum_to(a, param_shape, feature_shape):
    """Sum `a` over the axes where the parameter broadcasts, then shape it like the parameter."""
    axes = tuple(i for i, p in enumerate(param_shape) if p == 1)
    return a.sum(axis=axes).reshape(feature_shape)


def batch_norm_backward(dy, cache):
    """(dx, dweight, dbias) from dy: dweight = Σ dy·xhat, dbias = Σ dy, dx through the core.

    dy must have the input's shape; the parameter gradients take the parameters' dtypes (float16
    weight, float16 dweight, summed in float32 first), None where a parameter was None.
    """
    norm, w = cache.norm, cache.weight
    view = norm.x.shape                                    # the shape the core normalized
    dy = np.asarray(dy, dtype=norm.x.dtype)
    check_grad_shape("backward: dy", dy, cache.x_shape)
    xhat = norm.xhat.reshape(cache.x_shape)
    dweight = None if w is None else _sum_to(dy * xhat, cache.param_shape, cache.feature_shape)
    dbias = (None if cache.bias_grad_dtype is None
             else _sum_to(dy, cache.param_shape, cache.feature_shape))
    dxhat = dy if w is None else dy * np.asarray(w, dtype=dy.dtype).reshape(cache.param_shape)
    dx = normalize_backward(dxhat.reshape(view), norm, xhat.reshape(view)).reshape(cache.x_shape)
    return (dx.astype(cache.x_dtype, copy=False), _cast(dweight, cache.weight_grad_dtype),
            _cast(dbias, cache.bias_grad_dtype))


def _cast(g, dtype):
    """A parameter gradient in the parameter's dtype (None stays None)."""
    return None if g is None else g.astype(dtype, copy=False)


layer_norm_backward = group_norm_backward = instance_norm_backward = batch_norm_backward


def rms_norm_backward(dy, cache):
    """(dx, dweight) from dy: RMSNorm has no bias."""
    dx, dweight, _ = batch_norm_backward(dy, cache)
    return dx, dweight
