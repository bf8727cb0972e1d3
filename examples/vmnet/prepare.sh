#!/usr/bin/env bash
# prepare.sh makes the patched third-party modules that this module's
# go.mod replaces, under third_party/ (gitignored, never committed):
#
#   third_party/gvisor-tap-vsock  github.com/containers/gvisor-tap-vsock v0.8.9
#                                 + patches/gvisor-tap-vsock.patch
#   third_party/rootlesskit       github.com/rootless-containers/rootlesskit/v3 v3.3.0
#                                 + patches/rootlesskit.patch
#
# Each module is downloaded by `go mod download`, which verifies it against
# the checksum database; its h1: hash must also equal the one below, so a
# version that drifts (a retag, a proxy serving something else) fails here,
# loudly, before a patch is tried on it. A patch that does not apply whole
# fails too. Re-running replaces the copies.
#
# With -stock DIR it also builds the unpatched rootlesskit into DIR, from
# the module cache with rootlesskit's own go.mod, for the benchmark.
set -euo pipefail
cd "$(dirname "$0")"

declare -A version=(
  [github.com/containers/gvisor-tap-vsock]=v0.8.9
  [github.com/rootless-containers/rootlesskit/v3]=v3.3.0
)
declare -A sum=(
  [github.com/containers/gvisor-tap-vsock]=h1:6b7pqxFcKJ0EycBt1V4zPo3FQtgLLgs50AYkbFIb9eU=
  [github.com/rootless-containers/rootlesskit/v3]=h1:DrwwCK1W/yTpLbgBipzRXU+Y4nH8nUaFwoEfHJz3nls=
)
declare -A target=(
  [github.com/containers/gvisor-tap-vsock]=gvisor-tap-vsock
  [github.com/rootless-containers/rootlesskit/v3]=rootlesskit
)

# moddir MODULE prints the module cache directory of MODULE at its pinned
# version, after checking the download's hash.
moddir() {
  local mod=$1 json dir got
  json=$(go mod download -json "$mod@${version[$mod]}")
  dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p' <<<"$json")
  got=$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",*$/\1/p' <<<"$json")
  if [ -z "$dir" ] || [ "$got" != "${sum[$mod]}" ]; then
    echo "prepare.sh: $mod@${version[$mod]}: hash ${got:-missing}, want ${sum[$mod]}: the version drifted; refusing to patch it" >&2
    exit 1
  fi
  echo "$dir"
}

stock=""
if [ "${1:-}" = -stock ]; then
  stock=$(realpath -m "${2:?-stock needs a directory}")
fi

mkdir -p third_party
for mod in "${!version[@]}"; do
  dir=$(moddir "$mod")
  out=third_party/${target[$mod]}
  patch=patches/${target[$mod]}.patch
  rm -rf "$out" "$out.tmp"
  cp -r "$dir" "$out.tmp"
  chmod -R u+w "$out.tmp"
  if ! patch -d "$out.tmp" -p1 --forward --no-backup-if-mismatch --batch -s <"$patch"; then
    echo "prepare.sh: $patch does not apply to $mod@${version[$mod]}" >&2
    exit 1
  fi
  mv "$out.tmp" "$out"
  echo "prepare.sh: $out: $mod@${version[$mod]} + $patch"
done

if [ -n "$stock" ]; then
  mkdir -p "$stock"
  dir=$(moddir github.com/rootless-containers/rootlesskit/v3)
  (cd "$dir" && GOFLAGS=-mod=readonly go build -o "$stock/rootlesskit" ./cmd/rootlesskit)
  echo "prepare.sh: $stock/rootlesskit: stock rootlesskit ${version[github.com/rootless-containers/rootlesskit/v3]}"
fi
