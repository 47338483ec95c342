"""Print the path of every notebook the book's _toc.yml lists, one a line (none is fine)."""
import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def files(entry):
    """Every `file:` below one _toc.yml entry, depth first."""
    if isinstance(entry, dict):
        if "file" in entry:
            yield entry["file"]
        for key in ("parts", "chapters", "sections"):
            for child in entry.get(key, []):
                yield from files(child)


def notebooks(stems=()):
    """Paths (relative to the repository root) of the notebooks in the TOC, in TOC order; only
    those named in `stems` (e.g. "03-layernorm") when it is not empty."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    out = [toc["root"]] + list(files(toc))
    return [f + ".ipynb" for f in out if (ROOT / (f + ".ipynb")).exists()
            and (not stems or pathlib.Path(f).name in stems)]


if __name__ == "__main__":
    print("\n".join(notebooks()))
