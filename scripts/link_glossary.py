"""Link the first use of each glossary term in every chapter to book/glossary.md.

    python scripts/link_glossary.py            # rewrite the chapters that need links
    python scripts/link_glossary.py --check    # list what is missing, exit 1 if anything is

Only prose is touched: headings, code, math, links, roles, HTML and fenced blocks (directives
included) are left alone. The first plain-text use of a term (or one of its aliases, such as
"BatchNorm" for batch normalization) becomes {term}`text <term>`, unless the chapter links the
term already.
"""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# glossary term -> how chapters write it
ALIASES = {
    "internal covariate shift": ["internal covariate shift"],
    "batch normalization": ["batch normalization", "BatchNorm"],
    "layer normalization": ["layer normalization", "LayerNorm"],
    "instance normalization": ["instance normalization", "InstanceNorm"],
    "group normalization": ["group normalization", "GroupNorm"],
    "RMS normalization": ["RMS normalization", "RMSNorm"],
    "running statistics": ["running statistics"],
    "biased variance": ["biased variance"],
    "unbiased variance": ["unbiased variance"],
    "affine parameters": ["affine parameters"],
    "catastrophic cancellation": ["catastrophic cancellation"],
    "mini-batch": ["mini-batch"],
    "Pre-Norm": ["Pre-Norm"],
    "Post-Norm": ["Post-Norm"],
    "warm-up": ["warm-up"],
    "residual connection": ["residual connection"],
    "weight decay": ["weight decay"],
    "gradient clipping": ["gradient clipping"],
    "dropout": ["Dropout", "dropout"],
    "SyncBatchNorm": ["SyncBatchNorm"],
    "memory-bound": ["memory-bound"],
    "kernel fusion": ["kernel fusion"],
}

PROTECTED = re.compile(
    r"(`{3,}|~{3,})[\s\S]*?\1"          # fenced blocks, directives included
    r"|\$\$[\s\S]*?\$\$|\$[^$\n]+\$"     # math
    r"|\{[\w:-]+\}`[^`]*`|`[^`]*`"        # roles and inline code
    r"|!?\[[^\]]*\]\([^)]*\)"             # links and images
    r"|<[^>\n]+>"                         # HTML tags
    r"|^\s*#.*$",                         # headings
    re.MULTILINE)


def _free_spans(text):
    """(start, end) of the text outside protected regions."""
    spans, pos = [], 0
    for m in PROTECTED.finditer(text):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(text)))
    return spans


def _first_use(text, aliases):
    """(start, end) of the first unprotected use of any alias in text, or None."""
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, aliases)) + r")(?![\w-])")
    best = None
    for a, b in _free_spans(text):
        m = pattern.search(text, a, b)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), m.end())
    return best


def pending(cells):
    """[(term, cell index, start, end)] of first uses that still need a link."""
    out = []
    for term, aliases in ALIASES.items():
        texts = ["".join(c["source"]) for c in cells]
        if any(f"<{term}>`" in t or re.search(r"\{term\}`" + re.escape(term) + "`", t)
               for t in texts):
            continue
        for i, (cell, text) in enumerate(zip(cells, texts)):
            if cell["cell_type"] != "markdown":
                continue
            hit = _first_use(text, aliases)
            if hit:
                out.append((term, i, *hit))
                break
    return out


def link(path, write=True):
    """Link the first uses in one notebook; return the terms linked (or to link)."""
    nb = json.loads(path.read_text())
    cells, done = nb["cells"], []
    while True:
        todo = pending(cells)
        if not todo:
            break
        term, i, a, b = todo[0]
        text = "".join(cells[i]["source"])
        word = text[a:b]
        text = text[:a] + "{term}`" + word + " <" + term + ">`" + text[b:]
        cells[i]["source"] = text.splitlines(keepends=True)
        done.append(term)
    if done and write:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return done


def main():
    check = "--check" in sys.argv
    missing = 0
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        terms = link(path, write=not check)
        if terms:
            missing += len(terms)
            print(f"{path.relative_to(ROOT)}: {'needs' if check else 'linked'} {', '.join(terms)}")
    sys.exit(1 if check and missing else 0)


if __name__ == "__main__":
    main()
