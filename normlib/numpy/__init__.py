"""normlib.numpy: the NumPy reference. Hand-written forward and backward; imports no torch."""
from .core import NormCache, normalize, normalize_backward, normalize_with_stats
from .functional import (batch_norm, batch_norm_backward, group_norm, group_norm_backward,
                         instance_norm, instance_norm_backward, layer_norm, layer_norm_backward,
                         rms_norm, rms_norm_backward)
from .modules import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm

__all__ = ["NormCache", "normalize", "normalize_backward", "normalize_with_stats",
           "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
           "batch_norm_backward", "layer_norm_backward", "group_norm_backward",
           "instance_norm_backward", "rms_norm_backward",
           "BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm"]
