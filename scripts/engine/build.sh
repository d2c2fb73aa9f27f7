#!/usr/bin/env bash
# The Pulumi engine lockstep runs under: the `pulumi` CLI and the YAML language host.
#
# A `pulumi` on PATH (a user's install) is used as it is; its YAML host is the one beside it (the
# official install bundles it) or on PATH. Whatever is missing is built from the Go module proxy —
# pinned by scripts/engine/{pulumi,yaml}/go.mod + go.sum — into a cache outside the repo, once:
#   ${LOCKSTEP_ENGINE_CACHE:-~/.cache/lockstep/engine}/pulumi-v3.274.1/bin
#
# stdout: two lines, the absolute paths of `pulumi` and `pulumi-language-yaml`.
# stderr: one line saying where they are (or, on failure, one line naming what failed; exit 1, and
# the same line is kept in $CACHE/last-failure for scripts/lockstep/engine.py).
set -euo pipefail
PULUMI_VERSION=v3.274.1
YAML_VERSION=v1.25.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LOCKSTEP_ENGINE_CACHE:-$HOME/.cache/lockstep/engine}"
BIN="$CACHE/pulumi-$PULUMI_VERSION/bin"
mkdir -p "$BIN"
rm -f "$CACHE/last-failure"

fail() {
  echo "lockstep engine: $1" | tee "$CACHE/last-failure" >&2
  exit 1
}

# built <binary> <module> <version>: the binary exists and was built from module@version.
built() {
  [ -x "$1" ] || return 1
  command -v go >/dev/null || return 0
  go version -m "$1" 2>/dev/null | grep -qE "^[[:space:]]+mod[[:space:]]+$2[[:space:]]+$3[[:space:]]"
}

# build <name> <module dir> <package> <version> [go build flags...]: go build into $BIN, atomically.
build() {
  local name=$1 dir=$2 pkg=$3 version=$4
  shift 4
  command -v go >/dev/null || fail "cannot build $name $version: go is not on PATH (install Go 1.26, or put a pulumi CLI with its YAML host on PATH)"
  echo "lockstep engine: building $name $version from the Go module proxy into $BIN (once; minutes on 2 cores)" >&2
  local log="$CACHE/build-$name.log"
  go build -C "$HERE/$dir" -buildvcs=false -o "$BIN/$name.tmp" "$@" "$pkg" >"$log" 2>&1 \
    || fail "go build of $name $version failed: $(grep -v '^go: downloading' "$log" | tail -1) (full log: $log)"
  mv "$BIN/$name.tmp" "$BIN/$name"
}

exec 9>"$CACHE/.build.lock"
flock 9

pulumi="" how="user's install on PATH"
if found=$(command -v pulumi) && [ "$(dirname "$(readlink -f "$found")")" != "$(readlink -f "$BIN")" ]; then
  pulumi="$(readlink -f "$found")"
else
  how="built from the Go module proxy"
  pulumi="$BIN/pulumi"
  built "$pulumi" github.com/pulumi/pulumi/pkg/v3 "$PULUMI_VERSION" \
    || build pulumi pulumi github.com/pulumi/pulumi/pkg/v3/cmd/pulumi "$PULUMI_VERSION" \
      -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION"
fi

yaml="$(dirname "$pulumi")/pulumi-language-yaml"
if [ "$pulumi" = "$BIN/pulumi" ] || [ ! -x "$yaml" ]; then
  yaml="$(command -v pulumi-language-yaml || true)"
  if [ -z "$yaml" ] || [ "$(dirname "$(readlink -f "$yaml")")" = "$(readlink -f "$BIN")" ]; then
    yaml="$BIN/pulumi-language-yaml"
    built "$yaml" github.com/pulumi/pulumi-yaml "$YAML_VERSION" \
      || build pulumi-language-yaml yaml github.com/pulumi/pulumi-yaml/cmd/pulumi-language-yaml "$YAML_VERSION"
  fi
fi

version="$("$pulumi" version 2>/dev/null)" || fail "$pulumi does not run ('pulumi version' failed)"
echo "lockstep engine: pulumi ${version:-(no version)} at $pulumi ($how); YAML host at $yaml" >&2
echo "$pulumi"
echo "$yaml"
