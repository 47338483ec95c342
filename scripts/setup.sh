#!/usr/bin/env bash
# Create the virtual environment .venv (once) and install normlib with everything the book and the
# tests need. Safe to run again: it reinstalls only when requirements.txt or pyproject.toml change.
#   NORMBOOK_TORCH  the torch to install when the environment has none (default: torch==2.13.0,
#                   the version the book is tested with; any torch>=2.4 works)
#   PYTHON          the interpreter that creates .venv (default: python3, >= 3.10)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv with ${PYTHON:-python3}"
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
stamp="$venv/.normbook-installed"
want=$(cat requirements.txt pyproject.toml | "$py" -c "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip_install() {  # pip, without the lines about local package mirrors that some machines print
  "$py" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
pip_install --upgrade pip
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "setup: installing ${NORMBOOK_TORCH:-torch==2.13.0}"
  pip_install "${NORMBOOK_TORCH:-torch==2.13.0}"
fi
echo "setup: installing requirements.txt and normlib (editable)"
pip_install -r requirements.txt -e .
echo "$want" > "$stamp"
