"""The one picture behind all norms: an N x C x (H·W) cube with the set S of one statistic shaded.

Every norm normalizes each value with the mean and variance of a set S of positions; the norms
differ only in S. The sets here are computed from `normlib.axes` (the axis functions both backends
call), and the axis names in each panel's title are checked against `normlib.axes.NORM_AXES`, so
the picture cannot disagree with the code.

    from normlib.lab import axes_picture
    fig, cubes = axes_picture.draw(shape=(3, 6, 2, 2), num_groups=3)
"""
import numpy as np

from .. import axes as ax
from . import plot

AXIS_NAMES = ("N", "C", "H", "W")
NORMS = tuple(ax.NORM_AXES)          # BatchNorm, LayerNorm, InstanceNorm, GroupNorm, RMSNorm
LAB_NAME = {"BatchNorm": "batch", "LayerNorm": "layer", "InstanceNorm": "instance",
            "GroupNorm": "group", "RMSNorm": "rms"}
CENTERED = {norm: norm != "RMSNorm" for norm in NORMS}   # RMSNorm divides by the RMS, no mean


def set_ids(norm, shape, num_groups=1):
    """Integer labels of shape (N, C, H, W): equal labels share one mean and one variance.

    norm: a name from NORMS. num_groups: GroupNorm's G (ignored by the other norms).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        raise ValueError(f"set_ids: expected an (N, C, H, W) shape, got {shape}")
    if norm == "GroupNorm":
        n, g, rest = ax.group_norm_shape(shape, num_groups)          # the (N, G, C/G*H*W) view
        ids = np.broadcast_to(np.arange(n * g).reshape(n, g, 1), (n, g, rest))
        return ids.reshape(shape)                                      # back to (N, C, H, W)
    if norm == "BatchNorm":
        reduced = ax.batch_norm_axes(shape)
    elif norm == "InstanceNorm":
        reduced = ax.instance_norm_axes(shape)
    elif norm in ("LayerNorm", "RMSNorm"):
        reduced = ax.layer_norm_axes(shape, shape[1:], name=norm)    # per sample over (C, H, W)
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    kept = [a for a in range(4) if a not in reduced]
    index = np.indices(shape)                                          # 4, N, C, H, W
    return np.ravel_multi_index(tuple(index[a] for a in kept), tuple(shape[a] for a in kept))


def together(norm, shape, num_groups=1, cell=(0, 0, 0, 0)):
    """Boolean mask of shape (N, C, H, W): the set S that `cell` is normalized with."""
    ids = set_ids(norm, shape, num_groups)
    return ids == ids[tuple(cell)]


def spanned_axes(mask):
    """Names of the axes a set spans: "C" when it covers all of C, "C/G" for a part of it."""
    where = np.nonzero(mask)
    names = []
    for a, name in enumerate(AXIS_NAMES):
        k = len(np.unique(where[a]))
        if k == mask.shape[a] and k > 1:
            names.append(name)
        elif k > 1:
            names.append(name + "/G")
    return tuple(names)


def invariant_to(norm, shape, scale, shift, num_groups=1):
    """True when x -> scale * x + shift leaves the norm's xhat unchanged (up to eps).

    scale > 0 and shift are arrays broadcasting to (N, C, H, W). The picture predicts the answer:
    xhat is unchanged exactly when scale and shift are constant on every set S (and shift is 0 for
    RMSNorm, which does not subtract a mean).
    """
    shape = tuple(shape)
    scale = np.broadcast_to(np.asarray(scale, dtype=float), shape).ravel()
    shift = np.broadcast_to(np.asarray(shift, dtype=float), shape).ravel()
    if np.any(scale <= 0):
        raise ValueError("invariant_to: scale must be > 0 (a negative scale flips xhat's sign)")
    if not CENTERED[norm] and np.any(shift != 0):
        return False
    ids = set_ids(norm, shape, num_groups).ravel()
    for values in (scale, shift):
        low = np.full(ids.max() + 1, np.inf)
        high = np.full(ids.max() + 1, -np.inf)
        np.minimum.at(low, ids, values)
        np.maximum.at(high, ids, values)
        if np.any(high > low):
            return False
    return True


def draw_cube(axes3d, mask, color, empty="#e4e4e4"):
    """Draw a (N, C, L) boolean mask as a cube of cells, the True ones in `color`.

    Layout as in Wu & He 2018, Figure 2: C to the right, N into the page, H·W upwards. Returns the
    dict from `Axes3D.voxels`: (c, n, l) -> the cell's faces.
    """
    mask = np.asarray(mask, dtype=bool)
    cube = mask.transpose(1, 0, 2)                                     # C, N, L: voxel x, y, z
    colors = np.full(cube.shape, empty, dtype=object)
    colors[cube] = color
    cells = axes3d.voxels(np.ones(cube.shape, bool), facecolors=colors, edgecolor="#555555",
                          linewidth=0.4, shade=False)
    axes3d.set_xlabel("C (channels)", labelpad=-14, fontsize=9)
    axes3d.set_ylabel("N (samples)", labelpad=-14, fontsize=9)
    axes3d.set_zlabel("H·W (pixels)", labelpad=-10, fontsize=9)
    axes3d.set_xticks([])
    axes3d.set_yticks([])
    axes3d.set_zticks([])
    axes3d.set_box_aspect(cube.shape, zoom=1.0)
    axes3d.view_init(elev=26, azim=-60)
    axes3d.grid(False)
    return cells


def title(norm, shape, num_groups):
    """Panel title: the norm, then S from NORM_AXES, checked against the axis functions."""
    derived = spanned_axes(together(norm, shape, num_groups))
    if derived != tuple(ax.NORM_AXES[norm]):
        raise ValueError(f"axes_picture: {norm} reduces {derived} in normlib's axis functions but "
                         f"NORM_AXES says {ax.NORM_AXES[norm]}; pick a shape with N, C, H, W > 1 "
                         f"and 1 < num_groups < C, or fix the table")
    name = f"{norm} (G = {num_groups})" if norm == "GroupNorm" else norm
    extra = "" if CENTERED[norm] else ", no mean"
    return f"{name}\nS = ({', '.join(derived)}){extra}"


def draw(shape=(3, 6, 2, 2), num_groups=3, norms=NORMS, cell=None, ncols=None, figsize=None):
    """One cube per norm, S of `cell` shaded in the book's color for that norm.

    cell: the (n, c, h, w) position whose set is shaded; default the first sample's last channel,
    whose faces are in view. ncols: panels per row (default: all in one row).
    Returns (figure, cubes) with cubes[norm] = (mask of shape (N, C, H·W), the voxels dict).
    """
    import matplotlib.pyplot as plt
    n, c, h, w = shape
    cell = (0, c - 1, 0, 0) if cell is None else tuple(cell)
    ncols = ncols or len(norms)
    nrows = -(-len(norms) // ncols)
    fig = plt.figure(figsize=figsize or (3.0 * ncols, 3.0 * nrows + 0.6))
    cubes = {}
    for i, norm in enumerate(norms):
        axes3d = fig.add_subplot(nrows, ncols, i + 1, projection="3d")
        mask = together(norm, shape, num_groups, cell).reshape(n, c, h * w)
        cubes[norm] = (mask, draw_cube(axes3d, mask, plot.color(LAB_NAME[norm])))
        axes3d.set_title(title(norm, shape, num_groups), fontsize=10)
    from matplotlib.patches import Patch
    handles = [Patch(facecolor=plot.color(LAB_NAME[norm]), edgecolor="#555555",
                     label=f"S of {norm}") for norm in norms]
    handles.append(Patch(facecolor="#e4e4e4", edgecolor="#555555", label="other positions"))
    fig.legend(handles=handles, loc="lower center", ncol=-(-len(handles) // nrows), frameon=False)
    fig.suptitle(f"The set S of positions that share one mean and variance, (N, C, H, W) = "
                 f"{tuple(shape)}")
    return fig, cubes
