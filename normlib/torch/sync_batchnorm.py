r"""SyncBatchNorm: BatchNorm whose statistics are taken over the batch of every process.

Each process holds a shard of the global batch. Forward: every process computes, per channel, its
count n_i, mean m_i and sum of squared deviations M2_i (two passes, never E[x²] - E[x]²); one
``all_gather`` shares the (n_i, m_i, M2_i) of all processes, and each merges them the same way
(Chan et al.'s parallel variance):

.. math:: n = \sum_i n_i, \quad \mu = \sum_i \frac{n_i}{n} m_i, \quad
          M_2 = \sum_i \left(M_{2,i} + n_i (m_i - \mu)^2\right), \quad \sigma^2 = M_2 / n

Backward: dx needs two per-channel sums over the *global* batch, sum(dy) and sum(dy * xhat); one
``all_reduce`` adds them up. Parameter gradients stay per process (as in torch: DDP sums them).

Counts are gathered, not assumed equal, so uneven shards (even an empty one) are fine. Works with
any backend that has all_gather and all_reduce: gloo on CPU processes, NCCL on GPUs.

Without an initialized process group (or with a group of one process) the layer is a plain
BatchNorm in training too, as ``torch.nn.SyncBatchNorm`` is: a model converted for multi-process
training still runs, and is exactly BatchNorm, in a single process (a notebook, a test, eval).
"""
from math import prod

import torch
import torch.distributed as dist
from torch import nn

from .. import axes as ax
from . import functional as F
from .core import compute_dtype
from .modules import _BatchNorm

__all__ = ["SyncBatchNorm", "sync_batch_stats"]


def _local_stats(x3):
    """Per channel of x3 (N, C, S): count, mean, sum of squared deviations (two passes)."""
    n = x3.shape[0] * x3.shape[2]
    if n == 0:
        zeros = x3.new_zeros(x3.shape[1])
        return zeros.new_tensor(0.0), zeros, zeros.clone()
    mean = x3.mean(dim=(0, 2))                                           # C
    m2 = torch.linalg.vecdot(x3 - mean[:, None], x3 - mean[:, None], dim=2).sum(0)   # C
    return x3.new_tensor(float(n)), mean, m2


def sync_batch_stats(x, process_group=None):
    """(count, mean, var, gathered) of x (N, C, *) over the batches of every process in the group.

    var is biased (M2 / count); gathered is the (world, 1 + 2C) table each process shared:
    its count, its per-channel means and sums of squared deviations.
    """
    c = x.shape[1]
    x3 = x.to(compute_dtype(x.dtype)).reshape(x.shape[0], c, prod(x.shape[2:]))   # N, C, S
    n_i, mean_i, m2_i = _local_stats(x3)
    packed = torch.cat([n_i.reshape(1), mean_i, m2_i])                  # 1 + 2C
    world = dist.get_world_size(process_group)
    table = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(table, packed.contiguous(), group=process_group)
    gathered = torch.stack(table)                                        # world, 1 + 2C
    counts, means, m2s = gathered[:, :1], gathered[:, 1:1 + c], gathered[:, 1 + c:]
    count = counts.sum()
    mean = (counts * means).sum(0) / count                               # C
    m2 = (m2s + counts * (means - mean) ** 2).sum(0)                     # C, Chan's merge
    return count, mean, m2 / count, gathered


class _SyncBatchNormFunction(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias with (mean, var) over every process's batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, process_group):
        c = x.shape[1]
        count, mean, var, _ = sync_batch_stats(x, process_group)
        if int(count) <= 1:   # every process sees the same count, so all raise: no hang
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel when "
                             f"training, got {int(count)} over all processes")
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var * (count / (count - 1))
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        x3 = x.to(mean.dtype).reshape(x.shape[0], c, prod(x.shape[2:]))  # N, C, S
        rstd = torch.rsqrt(var + eps)                                    # C
        scale = rstd if weight is None else rstd * weight.to(mean.dtype)
        y = (x3 - mean[:, None]) * scale[:, None]
        if bias is not None:
            y = y + bias.to(mean.dtype)[:, None]
        ctx.save_for_backward(x3, mean, rstd, weight, count)
        ctx.meta = (x.shape, x.dtype, None if bias is None else bias.dtype, process_group)
        return y.reshape(x.shape).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x3, mean, rstd, weight, count = ctx.saved_tensors
        x_shape, x_dtype, bias_dtype, process_group = ctx.meta
        dy3 = dy.to(x3.dtype).reshape(x3.shape)                          # N, C, S
        xhat = (x3 - mean[:, None]) * rstd[:, None]                      # N, C, S
        sum_dy = dy3.sum(dim=(0, 2))                                     # C, this process
        sum_dy_xhat = torch.linalg.vecdot(dy3, xhat, dim=2).sum(0)       # C, this process
        dweight = sum_dy_xhat.to(weight.dtype) if weight is not None and \
            ctx.needs_input_grad[1] else None
        dbias = sum_dy.to(bias_dtype) if bias_dtype is not None and ctx.needs_input_grad[2] \
            else None
        dx = None
        if ctx.needs_input_grad[0]:
            sums = torch.cat([sum_dy, sum_dy_xhat])                      # 2C
            dist.all_reduce(sums, group=process_group)                   # over every process
            c = x3.shape[1]
            mean_dy, mean_dy_xhat = sums[:c] / count, sums[c:] / count   # C, C
            w = rstd if weight is None else rstd * weight.to(x3.dtype)
            dx = (dy3 - mean_dy[:, None] - xhat * mean_dy_xhat[:, None]) * w[:, None]
            dx = dx.reshape(x_shape).to(x_dtype)
        return dx, dweight, dbias, None, None, None, None, None


class SyncBatchNorm(_BatchNorm, nn.modules.batchnorm._BatchNorm):
    r"""BatchNorm over N and the spatial axes of the batches of *all* processes in a group.

    A drop-in twin of ``torch.nn.SyncBatchNorm``: same arguments, parameters, buffers and
    state_dict; any input (N, C, *) with N >= 0 per process. Training with an initialized process
    group of more than one process shares statistics (one all_gather forward, one all_reduce
    backward); otherwise, and in eval, it is exactly BatchNorm, as torch's is. Unlike torch's, it
    runs on CPU processes too (gloo). Like normlib's other BatchNorms it subclasses torch.nn's
    BatchNorm base class, so `isinstance(m, nn.modules.batchnorm._BatchNorm)` finds it, but not
    ``nn.SyncBatchNorm`` itself: DistributedDataParallel refuses a CPU model holding one of those.

    Args:
        num_features: C, the number of channels.
        eps, momentum, affine, track_running_stats, bias: as BatchNorm's.
        process_group: the group whose processes share statistics; None means the whole world.

    Shape: input (N, C, *), output the same.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None, *,
                 bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self.process_group = process_group

    def _check_input(self, input):
        F._check_dtype("SyncBatchNorm", input)
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm: expected at least 2D input (N, C, *), got "
                             f"{input.dim()}D input of shape {tuple(input.shape)}")
        ax.check_num_features("SyncBatchNorm", tuple(input.shape), self.num_features)

    def _group(self):
        """The process group to sync over, or None when there is nothing to sync with."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input):
        group = self._group()
        if group is None:
            return super().forward(input)   # plain BatchNorm: one process, or eval
        self._check_input(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        keep = self.track_running_stats
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias,
                                            self.running_mean if keep else None,
                                            self.running_var if keep else None,
                                            float(self.eps), momentum, group)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Replace every BatchNorm*d in `module` (torch.nn's or normlib's) by a SyncBatchNorm
        sharing its parameters and buffers; returns the new module if `module` is a BatchNorm."""
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
                not isinstance(module, cls):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group, bias=module.bias is not None)
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out

