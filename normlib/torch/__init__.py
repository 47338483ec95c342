"""normlib.torch: normlib's math as autograd Functions, and drop-in twins of torch.nn's norms."""
from . import functional
from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d,
                      InstanceNorm2d, InstanceNorm3d, LayerNorm, RMSNorm)
from .sync_batchnorm import SyncBatchNorm

__all__ = ["functional", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "RMSNorm",
           "SyncBatchNorm"]
