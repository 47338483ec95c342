"""The book's files: every chapter is in the TOC, stored without outputs, installs normlib from
the one repository URL in _config.yml, and never installs torch (Colab ships its own)."""
import json
import pathlib
import re
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from toc_notebooks import notebooks  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))


def _code_cells(path):
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_every_chapter_is_in_the_toc():
    listed = {ROOT / p for p in notebooks()}
    assert set(CHAPTERS) == listed


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), \
        f"strip it: python scripts/strip_outputs.py {path.relative_to(ROOT)}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_first_cell_installs_normlib_from_the_configured_repository(path):
    first = _code_cells(path)[0]
    urls = re.findall(r"git\+(https?://[^\"'\s@]+)", first)
    assert urls == [REPO_URL], f"the install cell must use git+{REPO_URL} (from _config.yml)"
    assert 'find_spec("normlib") is None' in first   # installs only when missing
    code = "\n".join(line.split("#")[0] for line in first.splitlines())   # comments may say so
    assert not re.search(r"\btorch\b", code), "the install cell must never install or pin torch"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_setup_cell_uses_the_shared_setup(path):
    assert "lab.setup(" in _code_cells(path)[1]


def test_bibliography_files_exist():
    for bib in CONFIG["bibtex_bibfiles"]:
        assert (ROOT / bib).exists(), bib


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_first_use_of_each_glossary_term_links_the_glossary(path):
    import link_glossary
    todo = link_glossary.link(path, write=False)
    assert not todo, f"run: python scripts/link_glossary.py  (unlinked: {', '.join(todo)})"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_prose_has_no_control_characters(path):
    """A LaTeX command written in a non-raw Python string loses its backslash: '\\beta' becomes a
    backspace and 'eta', '\\rangle' a line break and 'angle'. None of these belongs in prose."""
    cells = json.loads(path.read_text())["cells"]
    for i, cell in enumerate(cells):
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            bad = [c for c in "\x07\x08\x0b\x0c\r\t" if c in text]
            assert not bad, f"cell {i}: control characters {bad!r}"
            assert not re.search(r"(?<!\\)\n(angle|ight|ho\b)", text), f"cell {i}: lost \\r"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_figures_are_saved_only_through_lab_plot_save(path):
    """A chapter that writes to a fixed path (plt.savefig("/tmp/ch/fig.png")) fails on a machine
    where that folder is missing; lab.plot.save writes only where NORMBOOK_FIGURES points."""
    for code in _code_cells(path):
        assert ".savefig(" not in code, "save figures with lab.plot.save(fig, 'chapter/name')"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_cell_that_draws_a_figure_saves_it(path):
    """The README promises that every figure a chapter draws lands in $NORMBOOK_FIGURES: a cell
    that makes a figure also hands it to lab.plot.save (which writes nothing when unset)."""
    for i, code in enumerate(_code_cells(path)):
        draws = re.search(r"plt\.(subplots|figure|subplot_mosaic)\(", code)
        assert not draws or "plot.save(" in code, f"code cell {i} draws a figure it never saves"
