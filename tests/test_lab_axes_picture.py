"""normlib.lab.axes_picture: the drawn sets are the sets the norms really normalize together.

Oracles: torch.nn.functional's own norms (perturb one input, see which outputs move) and the
invariances they have under x -> a * x + b; the picture is read back from matplotlib's voxels.
"""
import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

import normlib.numpy as nn_
from normlib import axes as ax
from normlib.lab import axes_picture as pic
from normlib.lab import plot

matplotlib.use("Agg")
F = torch.nn.functional
SHAPE, GROUPS = (3, 6, 2, 3), 3


def torch_norm(norm, x, num_groups):
    """torch.nn.functional's version of each norm, no affine parameters."""
    if norm == "BatchNorm":
        return F.batch_norm(x, None, None, training=True)
    if norm == "LayerNorm":
        return F.layer_norm(x, x.shape[1:])
    if norm == "InstanceNorm":
        return F.instance_norm(x)
    if norm == "GroupNorm":
        return F.group_norm(x, num_groups)
    return F.rms_norm(x, x.shape[1:])


def numpy_norm(norm, x, num_groups):
    """normlib.numpy's version of each norm."""
    if norm == "BatchNorm":
        return nn_.batch_norm(x)[0]
    if norm == "LayerNorm":
        return nn_.layer_norm(x, x.shape[1:])[0]
    if norm == "InstanceNorm":
        return nn_.instance_norm(x)[0]
    if norm == "GroupNorm":
        return nn_.group_norm(x, num_groups)[0]
    return nn_.rms_norm(x, x.shape[1:])[0]


def moved_by(fn, x, cell):
    """Which outputs change when the input at `cell` changes: the cells normalized with it."""
    bumped = x.copy()
    bumped[cell] += 0.5
    return np.abs(np.asarray(fn(bumped)) - np.asarray(fn(x))) > 1e-9


@pytest.mark.parametrize("norm", pic.NORMS)
@pytest.mark.parametrize("cell", [(0, 0, 0, 0), (2, 5, 1, 2), (1, 3, 0, 1)])
def test_sets_are_what_torch_and_normlib_normalize_together(norm, cell):
    x = np.random.default_rng(1).normal(size=SHAPE)
    expected = moved_by(lambda a: torch_norm(norm, torch.tensor(a), GROUPS).numpy(), x, cell)
    assert (pic.together(norm, SHAPE, GROUPS, cell) == expected).all()
    assert (moved_by(lambda a: numpy_norm(norm, a, GROUPS), x, cell) == expected).all()


def test_each_title_is_the_table_in_normlib_axes():
    for norm in pic.NORMS:
        assert pic.spanned_axes(pic.together(norm, SHAPE, GROUPS)) == ax.NORM_AXES[norm]
        assert ", ".join(ax.NORM_AXES[norm]) in pic.title(norm, SHAPE, GROUPS)
    with pytest.raises(ValueError, match="NORM_AXES"):   # G = C: GroupNorm's set is InstanceNorm's
        pic.title("GroupNorm", SHAPE, SHAPE[1])


def canonical(ids):
    """Relabel a partition by first appearance, so two labelings of the same sets compare equal."""
    _, first, inverse = np.unique(ids.ravel(), return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].reshape(ids.shape)


def test_group_norm_spans_layer_norm_and_instance_norm():
    for shape in [(2, 4, 3, 3), (1, 6, 1, 5), SHAPE]:
        gn = lambda g: canonical(pic.set_ids("GroupNorm", shape, g))   # noqa: E731
        assert (gn(1) == canonical(pic.set_ids("LayerNorm", shape))).all()
        assert (gn(shape[1]) == canonical(pic.set_ids("InstanceNorm", shape))).all()
    assert len(np.unique(pic.set_ids("GroupNorm", SHAPE, GROUPS))) == SHAPE[0] * GROUPS


def test_drawn_cube_shades_exactly_the_set():
    fig, cubes = pic.draw(shape=SHAPE, num_groups=GROUPS)
    n, c, h, w = SHAPE
    try:
        for norm, (mask, cells) in cubes.items():
            cell = (0, c - 1, 0, 0)
            assert (mask == pic.together(norm, SHAPE, GROUPS, cell).reshape(n, c, h * w)).all()
            shaded = to_rgba(plot.color(pic.LAB_NAME[norm]))
            drawn = np.zeros((n, c, h * w), bool)
            # matplotlib draws the cells on the surface of the cube (hidden ones have no faces)
            assert len(cells) == n * c * h * w - (n - 2) * (c - 2) * (h * w - 2)
            visible = np.zeros_like(drawn)
            for (ci, ni, li), faces in cells.items():
                colors = {tuple(np.round(fc, 6)) for fc in faces.get_facecolor()}
                assert len(colors) == 1                               # one color per cell
                visible[ni, ci, li] = True
                drawn[ni, ci, li] = colors.pop() == tuple(np.round(shaded, 6))
            assert (drawn == mask).all(), norm                         # shaded exactly where S is
            assert visible[mask].all(), norm                           # and all of S is in view
    finally:
        matplotlib.pyplot.close(fig)


TRANSFORMS = {   # where a and b may vary: the broadcast shape of scale and shift
    "whole tensor": (1, 1, 1, 1), "per channel": (1, SHAPE[1], 1, 1),
    "per sample": (SHAPE[0], 1, 1, 1), "per sample and channel": (SHAPE[0], SHAPE[1], 1, 1),
    "per sample and group": "group", "per pixel": (1, 1, SHAPE[2], SHAPE[3]),
}


def transform(kind, rng):
    """Random scale > 0 and shift, constant except along `kind`."""
    if kind == "per sample and group":
        a = rng.uniform(0.3, 3, size=(SHAPE[0], GROUPS, 1, 1, 1))
        b = rng.normal(size=a.shape)
        expand = lambda v: np.broadcast_to(v, (SHAPE[0], GROUPS, SHAPE[1] // GROUPS, 1, 1))  # noqa
        per_channel = (SHAPE[0], SHAPE[1], 1, 1)
        return expand(a).reshape(per_channel), expand(b).reshape(per_channel)
    shape = TRANSFORMS[kind]
    return rng.uniform(0.3, 3, size=shape), rng.normal(size=shape)


@pytest.mark.parametrize("norm", pic.NORMS)
@pytest.mark.parametrize("kind", list(TRANSFORMS))
@pytest.mark.parametrize("scale_only", [False, True])
def test_predicted_invariances_hold_in_torch(norm, kind, scale_only):
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=SHAPE))
    a, b = transform(kind, rng)
    b = 0 * b if scale_only else b
    y = torch_norm(norm, x, GROUPS)
    y2 = torch_norm(norm, torch.tensor(a) * x + torch.tensor(b), GROUPS)
    change = (y2 - y).abs().max().item()
    if pic.invariant_to(norm, SHAPE, a, b, GROUPS):
        assert change < 1e-3, (norm, kind, change)      # eps = 1e-5 inside the sqrt only
    else:
        assert change > 1e-2, (norm, kind, change)


def test_errors_say_what_to_do():
    with pytest.raises(ValueError, match="norm must be one of"):
        pic.set_ids("WeightNorm", SHAPE)
    with pytest.raises(ValueError, match="divisible"):
        pic.set_ids("GroupNorm", SHAPE, 4)
    with pytest.raises(ValueError, match="scale must be > 0"):
        pic.invariant_to("LayerNorm", SHAPE, -1.0, 0.0)
