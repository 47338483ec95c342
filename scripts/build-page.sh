#!/usr/bin/env bash
# Build the whole book into /tmp/jb-<stem>, executing only the chapter book/<stem>.ipynb (the others
# render without outputs): a quick way to read one chapter as HTML while writing it.
# Usage: bash scripts/build-page.sh 03-layernorm   -> prints the HTML file to open.
set -euo pipefail
cd "$(dirname "$0")/.."
stem=${1:?usage: scripts/build-page.sh <chapter stem, e.g. 03-layernorm>}
out=/tmp/jb-$stem
mkdir -p "$out"
others=$(ls book/*.ipynb | grep -v "book/$stem.ipynb" | sed 's/^/    - /')
sed -e "s#book/_ext#$(pwd)/book/_ext#" -e "s/^  allow_errors: false$/  allow_errors: false\n  exclude_patterns:\n$(echo "$others" | sed 's/\//\\\//g' | tr '\n' '#' | sed 's/#/\\n/g')/" _config.yml > "$out/_config.yml"
NORMBOOK_QUIET=1 .venv/bin/jupyter-book build . --config "$out/_config.yml" --path-output "$out" -W -n --keep-going
echo "page: $out/_build/html/book/$stem.html"
