#!/usr/bin/env bash
# Run every test: normlib's pytest suite and, through nbval, every notebook listed in _toc.yml.
# Extra arguments go to pytest (e.g. -x, -k layer_norm).
set -euo pipefail
export NORMBOOK_QUIET=1   # no progress bars in test output or the built book
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}   # idle threads sleep: a busy machine stays fast
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py=.venv/bin/python
mapfile -t notebooks < <("$py" scripts/toc_notebooks.py | grep .)
echo "test: pytest tests/ and ${#notebooks[@]} notebook(s) from _toc.yml"
"$py" -m pytest tests "${notebooks[@]}" --nbval-lax --nbval-cell-timeout=900 "$@"
