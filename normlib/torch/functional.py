"""torch.nn.functional's norms, same signatures, built on normlib's one core.

Each function checks its input with `normlib.axes` (the checks and messages the NumPy reference
uses too) and calls one of the two layouts of the core in `core.py`, autograd.Functions with
hand-written backward passes.
"""
import os
from math import prod
from typing import List, Optional

import torch
from torch import Tensor

from .. import axes as ax
from .core import channel_norm, compute_dtype, feature_norm

__all__ = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"]

_KERNELS = []   # [module or None] once the first CUDA tensor asked for the Triton kernels


def _triton_kernels(x):
    """normlib.torch.triton_norm for CUDA float16/bfloat16/float32 input when Triton imports (and
    NORMLIB_DISABLE_TRITON is unset); else None, and the composite autograd path is used."""
    if not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    if not _KERNELS:
        try:
            if os.environ.get("NORMLIB_DISABLE_TRITON"):
                raise ImportError("disabled by NORMLIB_DISABLE_TRITON")
            from . import triton_norm
            _KERNELS.append(triton_norm)
        except ImportError:
            _KERNELS.append(None)
    return _KERNELS[0]


def _check_params(name, feature_shape, **params):
    """Every given parameter/buffer has the feature shape (C,) or normalized_shape."""
    for what, p in params.items():
        ax.check_param(name, what, None if p is None else tuple(p.shape), feature_shape)


def _check_dtype(name, input):
    """A floating-point input, as torch's norms require: the result is not rounded to integers."""
    if not input.is_floating_point():
        raise RuntimeError(f"{name}: expected a floating-point input, got {input.dtype}; convert "
                           f"it first, e.g. input.float()")


def _autocast_float32(*tensors):
    """Under CUDA autocast torch runs layer_norm and group_norm in float32 and returns float32 (its
    "fp32" list): float16/bfloat16 tensors are cast up, so our result has torch's dtype too."""
    if not (tensors[0].is_cuda and torch.is_autocast_enabled("cuda")):
        return tensors
    return tuple(t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t
                 for t in tensors)


@torch.no_grad()
def _update_running(running, batch_stat, momentum):
    """running <- (1 - momentum) * running + momentum * batch_stat, in place (PyTorch's convention)."""
    running.mul_(1.0 - momentum).add_(batch_stat.to(running.dtype), alpha=momentum)


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    r"""BatchNorm over (N, C, *): per-channel statistics over N and the spatial axes.

    .. math:: y = \frac{x - \mathrm{E}_B[x]}{\sqrt{\mathrm{Var}_B[x] + \epsilon}} \gamma + \beta

    In training the biased batch variance normalizes, and the running buffers (if given) move by
    ``momentum`` towards the batch mean and the *unbiased* batch variance. Otherwise the running
    buffers normalize. Shape: input (N, C) or (N, C, *), output the same.
    """
    _check_dtype("batch_norm", input)
    shape = tuple(input.shape)
    axes = ax.batch_norm_axes(shape)
    c = shape[1]
    _check_params("batch_norm", (c,), weight=weight, bias=bias, running_mean=running_mean,
                  running_var=running_var)
    ax.check_running_pair("batch_norm", running_mean, running_var)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: training=False normalizes with running_mean and "
                             "running_var; pass both, or use training=True for batch statistics")
        return channel_norm(input, weight, bias, c, True, eps, (running_mean, running_var))[0]
    ax.check_batch_stats(shape)
    y, mean, var = channel_norm(input, weight, bias, c, True, eps)
    if running_mean is not None and input.numel() > 0:   # an empty batch leaves them alone
        n = ax.reduced_count(shape, axes)
        _update_running(running_mean, mean.reshape(c), momentum)
        _update_running(running_var, var.reshape(c) * (n / (n - 1)), momentum)
    return y


def instance_norm(input: Tensor, running_mean: Optional[Tensor] = None,
                  running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    r"""InstanceNorm over (N, C, *): statistics per sample and channel over the spatial axes.

    With running buffers and ``use_input_stats``, they move towards the batch average of the
    per-instance mean and unbiased variance; ``use_input_stats=False`` normalizes with them.
    The output is contiguous whatever the input's memory format, as torch's.
    """
    _check_dtype("instance_norm", input)
    shape = tuple(input.shape)
    axes = ax.instance_norm_axes(shape)
    c = shape[1]
    _check_params("instance_norm", (c,), weight=weight, bias=bias, running_mean=running_mean,
                  running_var=running_var)
    ax.check_running_pair("instance_norm", running_mean, running_var)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm: use_input_stats=False needs running_mean and "
                             "running_var")
        y = channel_norm(input, weight, bias, c, False, eps, (running_mean, running_var))[0]
        return y.contiguous()
    ax.check_instance_stats(shape)
    y, mean, var = channel_norm(input, weight, bias, c, False, eps)   # mean, var: (N, C)
    if running_mean is not None and input.numel() > 0:   # an empty batch leaves them alone
        n = ax.reduced_count(shape, axes)
        _update_running(running_mean, mean.mean(0), momentum)
        _update_running(running_var, (var * (n / (n - 1))).mean(0), momentum)
    return y.contiguous()


def layer_norm(input: Tensor, normalized_shape: List[int], weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    r"""LayerNorm: statistics per sample over the last ``len(normalized_shape)`` axes.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta
    """
    _check_dtype("layer_norm", input)
    shape = tuple(input.shape)
    ax.layer_norm_axes(shape, normalized_shape)
    nshape = ax.normalized_shape_tuple(normalized_shape)
    _check_params("layer_norm", nshape, weight=weight, bias=bias)
    input, weight, bias = _autocast_float32(input, weight, bias)
    kernels = _triton_kernels(input)
    if kernels is not None:
        return kernels.triton_norm(input, weight, bias, prod(nshape), eps)
    return feature_norm(input, weight, bias, prod(nshape), eps)


def rms_norm(input: Tensor, normalized_shape: List[int], weight: Optional[Tensor] = None,
             eps: Optional[float] = None) -> Tensor:
    r"""RMSNorm: per sample over the last axes, no centering and no bias.

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \gamma

    ``eps=None`` uses the machine epsilon of the compute dtype (float32 for half input), as torch.
    """
    _check_dtype("rms_norm", input)
    shape = tuple(input.shape)
    ax.layer_norm_axes(shape, normalized_shape, name="RMSNorm")
    nshape = ax.normalized_shape_tuple(normalized_shape)
    _check_params("rms_norm", nshape, weight=weight)
    if eps is None:
        eps = torch.finfo(compute_dtype(input.dtype)).eps
    kernels = _triton_kernels(input)
    if kernels is not None:
        return kernels.triton_norm(input, weight, None, prod(nshape), eps, center=False)
    return feature_norm(input, weight, None, prod(nshape), eps, center=False)


def group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    r"""GroupNorm: channels in ``num_groups`` groups; statistics per sample and group."""
    _check_dtype("group_norm", input)
    shape = tuple(input.shape)
    ax.group_norm_shape(shape, num_groups)
    _check_params("group_norm", (shape[1],), weight=weight, bias=bias)
    input, weight, bias = _autocast_float32(input, weight, bias)
    return channel_norm(input, weight, bias, num_groups, False, eps)[0]
