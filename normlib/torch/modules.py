"""Drop-in twins of torch.nn's norm layers: same arguments, parameters, buffers, state_dict keys
and repr. Each module holds state and checks its input; the math is in `functional.py`.

Each class also subclasses its torch.nn twin, so code that picks layers by type finds ours too:
`isinstance(m, nn.BatchNorm2d)` to freeze BatchNorm when fine-tuning, weight decay left off
`nn.LayerNorm` parameters, `torch.func.replace_all_batch_norm_modules_`. Nothing of the twin runs:
ours come first in the method order and define __init__, forward, the resets, state_dict loading and
repr, and __init__ calls nn.Module's directly (the twin's would build its own parameters).
"""
import torch
from torch import nn

from .. import axes as ax
from . import functional as F

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm"]


class _NormBase(nn.Module):
    """weight/bias parameters and running_mean/running_var/num_batches_tracked buffers."""

    _version = 2   # torch's state_dict version: 2 added num_batches_tracked

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True):
        nn.Module.__init__(self)             # not the torch.nn twin's (see the module docstring)
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = nn.Parameter(torch.empty(num_features, **factory)) if affine else None
        self.bias = nn.Parameter(torch.empty(num_features, **factory)) if affine and bias else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)
        self.reset_parameters()

    def reset_running_stats(self):
        """running_mean <- 0, running_var <- 1, num_batches_tracked <- 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self):
        """Running statistics reset; weight <- 1, bias <- 0."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Checkpoints from before version 2 lack num_batches_tracked: keep ours, as torch does."""
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = (self.num_batches_tracked if self.num_batches_tracked is not None
                               and not self.num_batches_tracked.is_meta
                               else torch.tensor(0, dtype=torch.long))
        # nn.Module's, not the torch.nn twin's: its version handling would run a second time
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                        missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")

    _ndims, _hint, _unbatched_ndim = (), "", None   # set by each subclass

    def _check_input(self, input):
        """Dtype, dims and channels, raising before any state changes."""
        shape, name = tuple(input.shape), type(self).__name__
        F._check_dtype(name, input)
        ax.check_ndim(name, shape, self._ndims, self._hint)
        ax.check_num_features(name, shape, self.num_features,
                              channel_axis=0 if len(shape) == self._unbatched_ndim else 1)


class _BatchNorm(_NormBase):
    r"""Batch Normalization (Ioffe & Szegedy, 2015): per channel over the batch and spatial axes.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Training normalizes with the biased batch variance and updates
    ``running_mean <- (1 - momentum) * running_mean + momentum * batch_mean`` and ``running_var``
    with the *unbiased* batch variance. ``momentum`` is the weight of the new batch (not an
    optimizer's momentum); ``momentum=None`` gives the cumulative average over
    ``num_batches_tracked`` batches. Eval normalizes with the running buffers.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for numerical stability. Default 1e-5.
        momentum: weight of the new batch in the running statistics, or None. Default 0.1.
        affine: learnable per-channel weight (γ) and bias (β). Default True.
        track_running_stats: keep running statistics for eval. Default True.
        bias: with affine, whether β is learnable (keyword-only). Default True.

    Shape: input and output SHAPE.
    """

    def forward(self, input):
        self._check_input(input)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        if use_batch:
            ax.check_batch_stats(tuple(input.shape))   # refused batches leave the buffers alone
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        keep = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if keep else None,
                            self.running_var if keep else None, self.weight, self.bias,
                            use_batch, momentum, self.eps)


def _subclass(base, name, ndims, hint, shape_doc, unbatched_ndim=None):
    """A BatchNorm/InstanceNorm class for one input rank (1d, 2d, 3d), as torch.nn has, and a
    subclass of torch.nn's class of that name after `base`."""
    doc = base.__doc__.replace("SHAPE", shape_doc)
    return type(name, (base, getattr(nn, name)),
                {"__doc__": doc, "_ndims": ndims, "_hint": hint, "_unbatched_ndim": unbatched_ndim,
                 "__module__": __name__})


BatchNorm1d = _subclass(_BatchNorm, "BatchNorm1d", (2, 3),
                        "BatchNorm1d takes (N, C) or (N, C, L); use BatchNorm2d for images",
                        "(N, C) or (N, C, L)")
BatchNorm2d = _subclass(_BatchNorm, "BatchNorm2d", (4,),
                        "BatchNorm2d takes (N, C, H, W); use BatchNorm1d for (N, C)", "(N, C, H, W)")
BatchNorm3d = _subclass(_BatchNorm, "BatchNorm3d", (5,), "BatchNorm3d takes (N, C, D, H, W)",
                        "(N, C, D, H, W)")


class _InstanceNorm(_NormBase):
    r"""Instance Normalization (Ulyanov et al., 2016): per sample and channel over spatial axes.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Defaults differ from BatchNorm: ``affine=False``, ``track_running_stats=False``. With
    running statistics, training moves them towards the batch average of the per-instance mean and
    unbiased variance, and eval normalizes with them; ``momentum=None`` means 0 here, as in torch.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for numerical stability. Default 1e-5.
        momentum: weight of the new batch in the running statistics. Default 0.1.
        affine: learnable per-channel weight and bias. Default False.
        track_running_stats: keep running statistics for eval. Default False.

    Shape: input and output SHAPE.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """A checkpoint without a version (before torch 0.4) with running stats this layer does not
        track: an error naming the cause, even with strict=False, as torch's."""
        found = [prefix + name for name in ("running_mean", "running_var")
                 if prefix + name in state_dict]
        if local_metadata.get("version", None) is None and not self.track_running_stats and found:
            klass = type(self).__name__
            error_msgs.append(
                f"Unexpected running stats buffer(s) {' and '.join(repr(k) for k in found)} for "
                f"{klass} with track_running_stats=False; remove these keys from the state_dict "
                f"(a checkpoint from before torch 0.4 kept them by default), or build "
                f"{klass}(..., track_running_stats=True) to use them")
            for key in found:
                state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, input):
        self._check_input(input)
        if input.dim() == self._unbatched_ndim:
            return self.forward(input.unsqueeze(0)).squeeze(0)
        use_input_stats = self.training or not self.track_running_stats
        return F.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                               use_input_stats, 0.0 if self.momentum is None else self.momentum,
                               self.eps)


InstanceNorm1d = _subclass(_InstanceNorm, "InstanceNorm1d", (2, 3),
                           "InstanceNorm1d takes (N, C, L) or (C, L)", "(N, C, L) or (C, L)", 2)
InstanceNorm2d = _subclass(_InstanceNorm, "InstanceNorm2d", (3, 4),
                           "InstanceNorm2d takes (N, C, H, W) or (C, H, W)",
                           "(N, C, H, W) or (C, H, W)", 3)
InstanceNorm3d = _subclass(_InstanceNorm, "InstanceNorm3d", (4, 5),
                           "InstanceNorm3d takes (N, C, D, H, W) or (C, D, H, W)",
                           "(N, C, D, H, W) or (C, D, H, W)", 4)


class LayerNorm(nn.LayerNorm):
    r"""Layer Normalization (Ba et al., 2016): per sample over the last axes.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Args:
        normalized_shape: the trailing shape to normalize over (an int means the last axis).
        eps: added to the variance for numerical stability. Default 1e-5.
        elementwise_affine: learnable weight (γ) and bias (β) of ``normalized_shape``. Default True.
        bias: with elementwise_affine, whether β is learnable. Default True.

    Shape: input and output (*, *normalized_shape).
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 device=None, dtype=None):
        nn.Module.__init__(self)
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = ax.normalized_shape_tuple(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        affine = elementwise_affine
        self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory)) if affine else None
        self.bias = (nn.Parameter(torch.empty(self.normalized_shape, **factory))
                     if affine and bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        """weight <- 1, bias <- 0."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


class RMSNorm(nn.RMSNorm):
    r"""Root Mean Square Layer Normalization (Zhang & Sennrich, 2019): per sample, no centering.

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \gamma

    The mean of squares is over the last ``len(normalized_shape)`` axes of each sample, never over
    the batch.

    Args:
        normalized_shape: the trailing shape to normalize over (an int means the last axis).
        eps: added to the mean square; None means ``torch.finfo`` eps of the compute dtype.
        elementwise_affine: learnable weight (γ) of ``normalized_shape``. Default True.

    Shape: input and output (*, *normalized_shape).
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None):
        nn.Module.__init__(self)
        self.normalized_shape = ax.normalized_shape_tuple(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self.weight = (nn.Parameter(torch.empty(self.normalized_shape, device=device, dtype=dtype))
                       if elementwise_affine else None)
        self.reset_parameters()

    def reset_parameters(self):
        """weight <- 1."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, input):
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class GroupNorm(nn.GroupNorm):
    r"""Group Normalization (Wu & He, 2018): per sample over groups of channels and space.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    ``num_groups=1`` is LayerNorm over (C, *) with per-channel affine; ``num_groups=num_channels``
    is InstanceNorm.

    Args:
        num_groups: G, dividing num_channels.
        num_channels: C.
        eps: added to the variance for numerical stability. Default 1e-5.
        affine: learnable per-channel weight and bias. Default True.

    Shape: input and output (N, C, *).
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None,
                 *, bias=True):
        nn.Module.__init__(self)
        ax.group_norm_shape((1, num_channels), num_groups)   # divisibility, checked up front
        factory = {"device": device, "dtype": dtype}
        self.num_groups, self.num_channels, self.eps, self.affine = (num_groups, num_channels,
                                                                     eps, affine)
        self.weight = nn.Parameter(torch.empty(num_channels, **factory)) if affine else None
        self.bias = nn.Parameter(torch.empty(num_channels, **factory)) if affine and bias else None
        self.reset_parameters()

    reset_parameters = LayerNorm.reset_parameters

    def forward(self, input):
        ax.check_num_features("GroupNorm", tuple(input.shape), self.num_channels)
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")
