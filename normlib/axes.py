"""Which axes each norm reduces, and the shape checks every backend shares.

Pure Python, no array library: `normlib.numpy` and `normlib.torch` both call these functions, so they
agree on every edge case and raise the same messages. Shapes are tuples of ints.

Every norm computes ``xhat = (x - mean_S(x)) / sqrt(var_S(x) + eps)`` over a set S of axes:

======================  ==============  =====================================
layer                   input           S (axes reduced)
======================  ==============  =====================================
BatchNorm               (N, C, *)       0 and every spatial axis
LayerNorm               (*, *shape)     the last len(shape) axes
InstanceNorm            (N, C, *)       every spatial axis
GroupNorm               (N, C, *)       after a reshape to (N, G, C/G * prod(*)): axis 2
RMSNorm                 (*, *shape)     the last len(shape) axes, no centering
======================  ==============  =====================================
"""
from math import prod

__all__ = [
    "batch_norm_axes", "layer_norm_axes", "instance_norm_axes", "group_norm_shape",
    "check_batch_stats", "check_instance_stats", "check_num_features", "check_ndim",
    "check_param", "check_running_pair", "normalized_shape_tuple", "reduced_count", "NORM_AXES",
]

# The set S of each norm on an (N, C, H, W) input, by axis name; GroupNorm's "C/G" means the channels
# of one group. Pictures in the book are drawn from this table, so text and code cannot disagree.
NORM_AXES = {
    "BatchNorm": ("N", "H", "W"),
    "LayerNorm": ("C", "H", "W"),
    "InstanceNorm": ("H", "W"),
    "GroupNorm": ("C/G", "H", "W"),
    "RMSNorm": ("C", "H", "W"),
}


def _fmt(shape):
    """Shape as PyTorch prints it: (2, 3)."""
    return "(" + ", ".join(str(s) for s in shape) + ")"


def normalized_shape_tuple(normalized_shape):
    """`normalized_shape` as a tuple of ints (an int means a 1-tuple), as torch accepts it."""
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    shape = tuple(int(s) for s in normalized_shape)
    if len(shape) == 0:
        raise ValueError("normalized_shape must name at least one axis, e.g. normalized_shape=(64,)")
    return shape


def check_ndim(name, shape, allowed, hint=""):
    """Raise ValueError unless len(shape) is one of `allowed`."""
    if len(shape) not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        msg = f"{name}: expected {want} input, got {len(shape)}D input of shape {_fmt(shape)}"
        raise ValueError(msg + (f"; {hint}" if hint else ""))


def check_num_features(name, shape, num_features, channel_axis=1):
    """Raise ValueError unless shape has a channel axis `channel_axis` of num_features."""
    if num_features is None:
        return
    if len(shape) <= channel_axis:
        raise ValueError(f"{name}: expected input of shape (N, C, *), got {_fmt(shape)}; "
                         f"add a batch axis with x[None]")
    if shape[channel_axis] != num_features:
        raise ValueError(
            f"{name}: expected {num_features} channels on axis {channel_axis}, got input of shape "
            f"{_fmt(shape)}; build the layer with num_features={shape[channel_axis]} or "
            f"pass (N, {num_features}, ...) input")


def check_running_pair(name, running_mean, running_var):
    """Raise ValueError unless running_mean and running_var are both given or both None (torch's
    rule): a lone buffer would be silently ignored, or half updated."""
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{name}: running_mean and running_var must either both be None or "
                         f"neither be None; pass both buffers, or neither for batch statistics")


def check_param(name, what, param_shape, expected):
    """Raise ValueError unless a weight/bias/running buffer has the expected shape."""
    if param_shape is not None and tuple(param_shape) != tuple(expected):
        raise ValueError(f"{name}: {what} has shape {_fmt(param_shape)}, expected {_fmt(expected)} "
                         f"(one value per normalized feature)")


def reduced_count(shape, axes):
    """Number of values each statistic is computed from."""
    return prod(shape[a] for a in axes)


def batch_norm_axes(shape):
    """BatchNorm on (N, C, *): reduce over N and every spatial axis; statistics per channel."""
    if len(shape) < 2:
        raise ValueError(f"BatchNorm: expected input of shape (N, C) or (N, C, *), got {_fmt(shape)}; "
                         f"add a batch axis with x[None] or reshape to (N, C)")
    return (0,) + tuple(range(2, len(shape)))


def check_batch_stats(shape):
    """Training BatchNorm needs more than one value per channel (its variance would be 0/0)."""
    count = reduced_count(shape, batch_norm_axes(shape))
    if count == 1:
        raise ValueError(
            f"BatchNorm: expected more than 1 value per channel when training, got input of shape "
            f"{_fmt(shape)}; use a batch of at least 2 samples, or call .eval() to normalize with "
            f"the running statistics")


def instance_norm_axes(shape):
    """InstanceNorm on (N, C, *): reduce over every spatial axis; statistics per sample and channel."""
    if len(shape) < 3:
        raise ValueError(f"InstanceNorm: expected input of shape (N, C, *spatial), got {_fmt(shape)}; "
                         f"add a spatial axis, or use BatchNorm/LayerNorm for (N, C) input")
    return tuple(range(2, len(shape)))


def check_instance_stats(shape):
    """InstanceNorm from input statistics needs more than one spatial value per channel."""
    if reduced_count(shape, instance_norm_axes(shape)) == 1:
        raise ValueError(
            f"InstanceNorm: expected more than 1 spatial element when training, got input of shape "
            f"{_fmt(shape)}; a single position has zero variance, so normalize a larger map")


def layer_norm_axes(shape, normalized_shape, name="LayerNorm"):
    """LayerNorm/RMSNorm: reduce over the trailing axes, which must equal `normalized_shape`."""
    normalized_shape = normalized_shape_tuple(normalized_shape)
    k = len(normalized_shape)
    if len(shape) < k or tuple(shape[len(shape) - k:]) != normalized_shape:
        raise ValueError(
            f"{name}: normalized_shape={_fmt(normalized_shape)} must match the last {k} axes of the "
            f"input, got input of shape {_fmt(shape)}; build the layer with "
            f"normalized_shape={_fmt(shape[-k:]) if len(shape) >= k else _fmt(shape)}")
    return tuple(range(len(shape) - k, len(shape)))


def group_norm_shape(shape, num_groups):
    """GroupNorm on (N, C, *): the (N, G, C/G * prod(*)) view whose last axis is reduced."""
    if len(shape) < 2:
        raise ValueError(f"GroupNorm: expected input of shape (N, C, *), got {_fmt(shape)}; "
                         f"add a batch axis with x[None]")
    n, c = shape[0], shape[1]
    if num_groups <= 0 or c % num_groups != 0:
        raise ValueError(f"GroupNorm: num_channels ({c}) must be divisible by num_groups "
                         f"({num_groups}); pick num_groups among the divisors of {c}")
    return (n, num_groups, (c // num_groups) * prod(shape[2:]))
