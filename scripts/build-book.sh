#!/usr/bin/env bash
# Build the book: set up .venv, execute every notebook in _toc.yml, write HTML to _build/html.
# Warnings are errors (-W), cross-references are checked (-n).
set -euo pipefail
export NORMBOOK_QUIET=1   # no progress bars in test output or the built book
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}   # idle threads sleep: a busy machine stays fast
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/jupyter-book build . -W -n --keep-going
echo "book: open $(pwd)/_build/html/index.html in a browser"
