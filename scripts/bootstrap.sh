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
# The NAT lab tests (marker netns) need nftables and miniupnpd in Linux network namespaces.
need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v miniupnpd >/dev/null 2>&1 || need+=(miniupnpd-nftables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "bootstrap: WARNING: ${need[*]} missing and cannot be installed (not root?);" \
      "the netns tests will fail" >&2
  fi
fi
if [ -x interop/build.sh ] || [ -f interop/build.sh ]; then
  bash interop/build.sh
fi
