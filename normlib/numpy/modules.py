"""Small NumPy layers around the functional norms: forward, backward, train()/eval(), parameters.

Each layer keeps the cache of its last forward, so `backward(dy)` returns dx and stores the parameter
gradients in `dweight` / `dbias` (llm.c's contract, one layer at a time).
"""
import numpy as np

from .. import axes as ax
from . import functional as F
from .core import check_real


class _Layer:
    """Parameters (weight, bias), their gradients, the train/eval switch and the cache."""

    def __init__(self, feature_shape, affine=True, bias=True, dtype=np.float32):
        self.training = True
        self.weight = np.ones(feature_shape, dtype) if affine else None
        self.bias = np.zeros(feature_shape, dtype) if affine and bias else None
        self.dweight = self.dbias = None
        self._cache = None

    def train(self, mode=True):
        """Use batch statistics (and update running ones) in forward."""
        self.training = mode
        return self

    def eval(self):
        """Use running statistics where the layer keeps them."""
        return self.train(False)

    def parameters(self):
        """{name: array} of the learnable parameters."""
        return {k: v for k, v in (("weight", self.weight), ("bias", self.bias)) if v is not None}

    def gradients(self):
        """{name: gradient} from the last backward, same keys as parameters()."""
        return {k: g for k, g in (("weight", self.dweight), ("bias", self.dbias)) if g is not None}

    def __call__(self, x):
        return self.forward(x)

    def backward(self, dy):
        """dx from dy; parameter gradients land in self.dweight / self.dbias."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        dx, self.dweight, self.dbias = F.batch_norm_backward(dy, self._cache)
        return dx


class _Stats(_Layer):
    """Running mean/var buffers and the batch counter shared by BatchNorm and InstanceNorm."""

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, dtype):
        super().__init__((num_features,), affine, dtype=dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.running_mean = np.zeros(num_features, dtype) if track_running_stats else None
        self.running_var = np.ones(num_features, dtype) if track_running_stats else None
        self.num_batches_tracked = 0 if track_running_stats else None


class BatchNorm(_Stats):
    """BatchNorm for (N, C) or (N, C, *) input, PyTorch's semantics (momentum=None: cumulative)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)

    def forward(self, x):
        x = np.asarray(x)
        ax.batch_norm_axes(x.shape)
        ax.check_num_features("BatchNorm", x.shape, self.num_features)
        use_batch = self.training or self.running_mean is None
        check_real(x)                       # before any state changes
        if use_batch:
            ax.check_batch_stats(x.shape)
        momentum = self.momentum or 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if self.momentum is None:
                momentum = 1.0 / self.num_batches_tracked
        track = not self.training or self.track_running_stats
        y, self._cache = F.batch_norm(
            x, self.weight, self.bias, self.running_mean if track else None,
            self.running_var if track else None, use_batch, momentum, self.eps)
        return y


class InstanceNorm(_Stats):
    """InstanceNorm for (N, C, *) input, or unbatched (C, L) as torch.nn.InstanceNorm1d takes it;
    running statistics only if track_running_stats."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)
        self._unbatched = False

    def forward(self, x):
        x = np.asarray(x)
        unbatched = x.ndim == 2                       # (C, L): one sample, a batch of 1 inside
        if unbatched:
            ax.check_num_features("InstanceNorm", x.shape, self.num_features, channel_axis=0)
            x = x[None]
        ax.instance_norm_axes(x.shape)
        ax.check_num_features("InstanceNorm", x.shape, self.num_features)
        use_input_stats = self.training or not self.track_running_stats
        y, self._cache = F.instance_norm(
            x, self.weight, self.bias, self.eps, self.running_mean, self.running_var,
            use_input_stats, self.momentum or 0.0)
        self._unbatched = unbatched
        return y[0] if unbatched else y

    def backward(self, dy):
        """dx from dy, of the unbatched shape when forward's input was (C, L)."""
        if self._unbatched:
            return super().backward(np.asarray(dy)[None])[0]
        return super().backward(dy)


class GroupNorm(_Layer):
    """GroupNorm: `num_groups` groups of `num_channels // num_groups` channels, per sample."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32):
        ax.group_norm_shape((1, num_channels), num_groups)
        super().__init__((num_channels,), affine, dtype=dtype)
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine

    def forward(self, x):
        x = np.asarray(x)
        ax.check_num_features("GroupNorm", x.shape, self.num_channels)
        y, self._cache = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return y


class LayerNorm(_Layer):
    """LayerNorm over the last len(normalized_shape) axes."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        self.normalized_shape = ax.normalized_shape_tuple(normalized_shape)
        super().__init__(self.normalized_shape, elementwise_affine, bias, dtype)
        self.eps, self.elementwise_affine = eps, elementwise_affine

    def forward(self, x):
        y, self._cache = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return y


class RMSNorm(_Layer):
    """RMSNorm over the last len(normalized_shape) axes; only a weight (γ), no bias."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        self.normalized_shape = ax.normalized_shape_tuple(normalized_shape)
        super().__init__(self.normalized_shape, elementwise_affine, bias=False, dtype=dtype)
        self.eps, self.elementwise_affine = eps, elementwise_affine

    def forward(self, x):
        y, self._cache = F.rms_norm(x, self.normalized_shape, self.weight, self.eps)
        return y
