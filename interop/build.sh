#!/usr/bin/env bash
# Build the interop peers (idempotent; a no-op when nothing changed):
#   interop/go/bin/peer, interop/go/bin/gbpeer  <- go build, from interop/go/go.mod + go.sum
#   interop/js/node_modules                     <- npm ci, from interop/js/package-lock.json
#   interop/rust/target/release/peer            <- cargo build --release --locked, from interop/rust/Cargo.lock
# Go >= 1.26 and Node >= 20 are required. A missing toolchain is an error, never a skip:
# the interop tests must run in CI. GOTOOLCHAIN=local: the go command never downloads a
# toolchain here; modules come from the Go module proxy, npm packages from the npm registry.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

die() { echo "interop/build.sh: ERROR: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "go not found on PATH (need Go >= 1.26 to build the go-libp2p peers)"
command -v node >/dev/null 2>&1 || die "node not found on PATH (need Node >= 20 for the js-libp2p peer)"
command -v npm >/dev/null 2>&1 || die "npm not found on PATH (need npm to install the js-libp2p peer)"
gov="$(go env GOVERSION)"
case "$gov" in go1.2[6-9]*|go1.[3-9][0-9]*|go[2-9]*) ;; *) die "Go $gov is too old: go.mod needs go1.26" ;; esac
nodev="$(node -p 'process.versions.node')"
[ "${nodev%%.*}" -ge 20 ] || die "Node $nodev is too old: js-libp2p 3.x needs Node >= 20"

# --- Go peers: rebuild when a source file, go.mod/go.sum or the Go version changed
cd "$here/go"
bins=(peer gbpeer natpeer)
pkgs=()
for b in "${bins[@]}"; do [ -d "$b" ] && pkgs+=("./$b"); done
sum="$( { echo "$gov"; find . -path ./bin -prune -o -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -d' ' -f1)"
stamp=bin/.stamp
fresh=1
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] || fresh=0
for p in "${pkgs[@]}"; do [ -x "bin/${p#./}" ] || fresh=0; done
if [ "$fresh" = 1 ]; then
  echo "interop: go peers up to date ($gov; ${pkgs[*]#./} in interop/go/bin)"
else
  echo "interop: go build ${pkgs[*]} ($gov; first build downloads modules and takes ~2 min)"
  mkdir -p bin
  t0=$SECONDS
  go build -trimpath -o bin/ "${pkgs[@]}" || die "go build failed"
  echo "$sum" > "$stamp"
  echo "interop: go peers built in $((SECONDS - t0)) s"
fi

# --- JS peer: npm ci when package-lock.json or the Node version changed
cd "$here/js"
sum="$( { echo "$nodev"; sha256sum package.json package-lock.json; } | sha256sum | cut -d' ' -f1)"
stamp=node_modules/.glueberry-stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
  echo "interop: js peer up to date (node $nodev)"
else
  echo "interop: npm ci in interop/js (node $nodev)"
  t0=$SECONDS
  npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed"
  echo "$sum" > "$stamp"
  echo "interop: js peer installed in $((SECONDS - t0)) s"
fi
node peer.mjs version >/dev/null || die "the js peer does not start (node peer.mjs version)"

# --- Rust peer: cargo build when a source file, Cargo.toml/Cargo.lock or the Rust version
# changed. Crates come from crates.io (pinned by Cargo.lock); the target directory is
# interop/rust/target (not committed), so a fresh clone builds from cold once.
# rustup installs into ~/.cargo/bin, which a non-login shell may lack on its PATH
command -v cargo >/dev/null 2>&1 || [ ! -x "$HOME/.cargo/bin/cargo" ] || export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH (need Rust >= 1.83 to build the rust-libp2p peer)"
cd "$here/rust"
rustv="$(rustc --version)"
sum="$( { echo "$rustv"; find src -type f -name '*.rs' | LC_ALL=C sort | xargs sha256sum; sha256sum Cargo.toml Cargo.lock; } | sha256sum | cut -d' ' -f1)"
export CARGO_TARGET_DIR="$here/rust/target"
stamp=target/.glueberry-stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && [ -x target/release/peer ]; then
  echo "interop: rust peer up to date ($rustv)"
else
  echo "interop: cargo build --release --locked in interop/rust ($rustv; a cold build takes several minutes)"
  t0=$SECONDS
  cargo build --release --locked --quiet || die "cargo build failed"
  echo "$sum" > "$stamp"
  echo "interop: rust peer built in $((SECONDS - t0)) s"
fi
target/release/peer version >/dev/null || die "the rust peer does not start (interop/rust/target/release/peer version)"
