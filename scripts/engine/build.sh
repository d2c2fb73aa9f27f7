#!/usr/bin/env bash
# The Pulumi engine lockstep runs under: the `pulumi` CLI, the YAML and the Python language hosts.
#
# A `pulumi` on PATH (a user's install) is used as it is; its language hosts are the ones beside it
# (the official install bundles them) or on PATH. Whatever is missing is built into a cache outside
# the repo, once:
#   ${LOCKSTEP_ENGINE_CACHE:-~/.cache/lockstep/engine}/pulumi-v3.274.1/bin
# the CLI and the YAML host from the Go module proxy (pinned by scripts/engine/{pulumi,yaml}/go.mod +
# go.sum); the Python host, which the proxy does not serve, from its sources in
# ../shared/engine/pulumi-language-python beside the repo (or $LOCKSTEP_PYTHON_HOST_SRC), copied
# into the cache first because ../shared is read-only.
#
# stdout: three lines, the absolute paths of `pulumi`, `pulumi-language-yaml` and
# `pulumi-language-python` (its `pulumi-language-python-exec` shim sits beside it).
# stderr: one line saying where they are (or, on failure, one line naming what failed; exit 1, and
# the same line is kept in $CACHE/last-failure for scripts/lockstep/engine.py).
set -euo pipefail
PULUMI_VERSION=v3.274.1
YAML_VERSION=v1.25.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON_HOST_SRC="${LOCKSTEP_PYTHON_HOST_SRC:-$HERE/../../../shared/engine/pulumi-language-python}"
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
  command -v go >/dev/null || fail "cannot build $name $version: go is not on PATH (install Go 1.26, or put a pulumi CLI with its language hosts on PATH)"
  echo "lockstep engine: building $name $version into $BIN (once; minutes on 2 cores)" >&2
  local log="$CACHE/build-$name.log"
  go build -C "$dir" -buildvcs=false -o "$BIN/$name.tmp" "$@" "$pkg" >"$log" 2>&1 \
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
    || build pulumi "$HERE/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi "$PULUMI_VERSION" \
      -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION"
fi

yaml="$(dirname "$pulumi")/pulumi-language-yaml"
if [ "$pulumi" = "$BIN/pulumi" ] || [ ! -x "$yaml" ]; then
  yaml="$(command -v pulumi-language-yaml || true)"
  if [ -z "$yaml" ] || [ "$(dirname "$(readlink -f "$yaml")")" = "$(readlink -f "$BIN")" ]; then
    yaml="$BIN/pulumi-language-yaml"
    built "$yaml" github.com/pulumi/pulumi-yaml "$YAML_VERSION" \
      || build pulumi-language-yaml "$HERE/yaml" github.com/pulumi/pulumi-yaml/cmd/pulumi-language-yaml "$YAML_VERSION"
  fi
fi

# The Python host: beside the user's pulumi, else on PATH, else built from its sources. The cached
# build is current when its copied sources equal the ones it would be built from.
python="$(dirname "$pulumi")/pulumi-language-python"
if [ "$pulumi" = "$BIN/pulumi" ] || [ ! -x "$python" ]; then
  python="$(command -v pulumi-language-python || true)"
  if [ -z "$python" ] || [ "$(dirname "$(readlink -f "$python")")" = "$(readlink -f "$BIN")" ]; then
    python="$BIN/pulumi-language-python"
    src="$CACHE/src/pulumi-language-python"
    if [ ! -x "$python" ] || [ ! -x "$BIN/pulumi-language-python-exec" ] \
      || { [ -d "$PYTHON_HOST_SRC" ] && ! diff -rq "$PYTHON_HOST_SRC" "$src" >/dev/null 2>&1; }; then
      [ -f "$PYTHON_HOST_SRC/main.go" ] \
        || fail "cannot build pulumi-language-python: its sources are not at $PYTHON_HOST_SRC (put a pulumi CLI with its Python host on PATH, or set LOCKSTEP_PYTHON_HOST_SRC)"
      rm -rf "$src" && mkdir -p "$CACHE/src" && cp -r "$PYTHON_HOST_SRC" "$src" && chmod -R u+w "$src"
      build pulumi-language-python "$src" . "(sources of v3.259.0)" \
        -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION"
      install -m 755 "$src/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
    fi
  fi
fi

version="$("$pulumi" version 2>/dev/null)" || fail "$pulumi does not run ('pulumi version' failed)"
echo "lockstep engine: pulumi ${version:-(no version)} at $pulumi ($how); YAML host at $yaml; Python host at $python" >&2
echo "$pulumi"
echo "$yaml"
echo "$python"
