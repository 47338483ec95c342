#!/usr/bin/env bash
# Check the built book as a reader's browser sees it (run scripts/build-book.sh first):
#  1. every internal link (file and #anchor) of every page resolves (external links are not
#     fetched: the machine may be offline; the build's -n -W already checks cross-references),
#  2. every TOC page in headless Chromium: no console errors, every image loads, MathJax renders
#     (from a local copy of the npm mathjax@3 package), screenshots in _build/screenshots/.
# Installs what it needs when missing: Debian's chromium, npm's mathjax@3, PyPI's playwright.
set -euo pipefail
export NORMBOOK_QUIET=1
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py=.venv/bin/python
test -d _build/html || { echo "check-html: no _build/html; run scripts/build-book.sh first"; exit 1; }

if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
    && ! command -v google-chrome >/dev/null; then
  echo "check-html: installing chromium (Debian package)"
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
fi
if [ ! -f .cache/mathjax/node_modules/mathjax/es5/tex-mml-chtml.js ]; then
  echo "check-html: installing mathjax@3 (npm) into .cache/mathjax"
  mkdir -p .cache/mathjax && npm install --silent --prefix .cache/mathjax mathjax@3 >/dev/null
fi
"$py" -c "import playwright" 2>/dev/null || "$py" -m pip install -q playwright 2>&1 | { grep -v "is ignored: it is neither" || true; }

echo "check-html: internal links, then every page in Chromium"
"$py" scripts/check_html.py --mathjax .cache/mathjax/node_modules/mathjax/es5
