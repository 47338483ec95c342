"""One matplotlib style for the whole book: readable sizes, retina output, no missing glyphs."""
import os
import pathlib
import warnings

import matplotlib as mpl

COLORS = {None: "#555555", "none": "#555555", "batch": "#1f77b4", "layer": "#d62728",
          "group": "#2ca02c", "instance": "#9467bd", "rms": "#ff7f0e"}


def style():
    """Apply the book's style; in a notebook, also render figures as retina PNG.

    A label with a character the font lacks (CJK text, say) becomes an error instead of an empty box.
    """
    warnings.filterwarnings("error", message=r"Glyph \d+ .*missing from")
    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0), "figure.dpi": 100, "savefig.dpi": 200,
        "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
        "grid.alpha": 0.3, "font.family": "DejaVu Sans",
    })
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("retina")
    except ImportError:   # outside IPython
        pass


def color(norm):
    """The book's color for a norm name ("batch", "layer", ... or None)."""
    return COLORS.get(norm, "#000000")


def save(fig, name):
    """Also write `fig` to $NORMBOOK_FIGURES/<name>.png, to look at it outside the notebook.

    Nothing is written when NORMBOOK_FIGURES is unset, so a reader's run leaves no files behind.
    `name` may hold a folder: "02-batchnorm/lr_sweep".
    """
    folder = os.environ.get("NORMBOOK_FIGURES")
    if folder:
        path = pathlib.Path(folder) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
