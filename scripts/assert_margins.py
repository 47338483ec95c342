"""Execute chapters and print how close each comparison assert came to failing.

    .venv/bin/python scripts/assert_margins.py [--full] [--below 0.1] [stem ...]

An assert that passes by a hair on this machine may fail on another (a GPU's rounding, another
BLAS) or with FULL on. Each `assert a < b` (also <=, >, >=, chains and `np.all(a < b)`) is run
as before and its slack recorded: (b - a) / max(|a|, |b|), the worst element for arrays. Other
asserts (`==`, `allclose`, `and`) are run but not measured. `--full` forces `FULL = True`, what
a Colab GPU runs; on a CPU that takes minutes per chapter. Exit status 1 if a chapter fails.
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile

import nbformat

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from notebook_times import execute  # noqa: E402
from toc_notebooks import ROOT, notebooks  # noqa: E402

FULL_LINE = 'FULL = device.type == "cuda"'

# Run first in the chapter's kernel: an IPython AST transformer that evaluates each comparison's
# operands once, records them, then asserts the comparison on the recorded values.
RECORDER = r'''
import ast as _ast, json as _json, numpy as _np

def _margin_record(src, ops, values, path=__PATH__):
    checks = []
    for op, a, b in zip(ops, values[:-1], values[1:]):
        try:
            a, b = _np.asarray(a, dtype=float), _np.asarray(b, dtype=float)
        except (TypeError, ValueError):
            continue
        if op in ("Gt", "GtE"):
            a, b = b, a                                  # slack of a > b is that of b < a
        a, b = _np.broadcast_arrays(a, b)
        if a.size == 0:
            continue
        slack = (b - a) / _np.maximum(_np.maximum(abs(a), abs(b)), 1e-300)
        i = int(_np.nanargmin(slack)) if not _np.isnan(slack).all() else 0
        checks.append([float(slack.flat[i]), float(a.flat[i]), float(b.flat[i])])
    with open(path, "a") as f:
        f.write(_json.dumps({"src": src, "checks": checks}) + "\n")

class _MeasureAsserts(_ast.NodeTransformer):
    ORDER = (_ast.Lt, _ast.LtE, _ast.Gt, _ast.GtE)

    def visit_Assert(self, node):
        test, wrap = node.test, None
        if (isinstance(test, _ast.Call) and len(test.args) == 1 and not test.keywords
                and getattr(test.func, "attr", getattr(test.func, "id", None)) == "all"):
            test, wrap = test.args[0], test.func           # np.all(a < b), all(...)
        if not (isinstance(test, _ast.Compare) and all(isinstance(o, self.ORDER) for o in test.ops)):
            return node
        names = [f"_margin_v{k}" for k in range(len(test.ops) + 1)]
        load = lambda: [_ast.Name(n, _ast.Load()) for n in names]
        assign = _ast.Assign([_ast.Tuple([_ast.Name(n, _ast.Store()) for n in names], _ast.Store())],
                             _ast.Tuple([test.left, *test.comparators], _ast.Load()))
        record = _ast.Expr(_ast.Call(_ast.Name("_margin_record", _ast.Load()), [
            _ast.Constant(_ast.unparse(node.test)),
            _ast.List([_ast.Constant(type(o).__name__) for o in test.ops], _ast.Load()),
            _ast.List(load(), _ast.Load())], []))
        compare = _ast.Compare(load()[0], test.ops, load()[1:])
        check = _ast.Assert(compare if wrap is None else _ast.Call(wrap, [compare], []), node.msg)
        return [_ast.fix_missing_locations(_ast.copy_location(s, node)) for s in (assign, record, check)]

get_ipython().ast_transformers.append(_MeasureAsserts())
'''


def measure(path, full, log):
    """Execute one notebook with the recorder; the error message, or None."""
    nb = nbformat.read(path, as_version=4)
    if full:
        cells = [c for c in nb.cells if c.cell_type == "code" and FULL_LINE in c.source]
        if len(cells) != 1:
            return f"expected one cell with `{FULL_LINE}`, found {len(cells)}"
        cells[0].source = cells[0].source.replace(FULL_LINE, "FULL = True")
    nb.cells.insert(0, nbformat.v4.new_code_cell(RECORDER.replace("__PATH__", repr(str(log)))))
    return execute(nb, path.parent, timeout=5400)      # FULL chapters take minutes on a CPU


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stems", nargs="*", help="chapters to run (default: every one in _toc.yml)")
    parser.add_argument("--full", action="store_true", help="force FULL = True (the GPU settings)")
    parser.add_argument("--below", type=float, default=0.1, help="list asserts with less slack")
    args = parser.parse_args()
    os.environ.setdefault("NORMBOOK_QUIET", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as scripts/test.sh
    paths = [ROOT / p for p in notebooks(args.stems)]
    failed = 0
    for path in paths:
        with tempfile.TemporaryDirectory() as tmp:
            log = pathlib.Path(tmp) / "margins.jsonl"
            error = measure(path, args.full, log)
            rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        worst = {}                                   # src -> the smallest slack over its runs
        for row in rows:
            for slack, a, b in row["checks"]:
                if row["src"] not in worst or slack < worst[row["src"]][0]:
                    worst[row["src"]] = (slack, a, b)
        thin = sorted((w, src) for src, w in worst.items() if w[0] < args.below)
        failed += bool(error)
        print(f"{path.stem}: {len(worst)} comparison asserts, {len(thin)} with slack below "
              f"{args.below:g}" + (f"; FAILED {error}" if error else ""), flush=True)
        for (slack, a, b), src in thin:
            print(f"  {slack:7.3f}  {src[:100]}  (as a < b: {a:.4g} < {b:.4g})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
