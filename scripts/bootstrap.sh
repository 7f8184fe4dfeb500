#!/usr/bin/env bash
# Install everything the tests need, idempotently: the package with its dev extras, and the
# interop peers (Go and JS) built from registry packages by interop/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.cache/bootstrap.stamp
mkdir -p .cache
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$PYTHON" -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
if [ -x interop/build.sh ]; then
  bash interop/build.sh
fi
