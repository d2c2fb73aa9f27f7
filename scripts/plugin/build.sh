#!/usr/bin/env bash
# `make plugin`: lockstep's resource plugin as an archive a user installs with
#   pulumi plugin install resource lockstep <version> --file build/plugin/pulumi-resource-lockstep-v<version>-linux-amd64.tar.gz
# for Pulumi programs outside this repository (any language: the ModelRelease component and
# lockstep's custom resources), with nothing on PATH and no path in their Pulumi.yaml.
#
# The archive holds lockstep's wheel (lockstep + components), the pinned requirements of uv.lock,
# and the launcher scripts/plugin/pulumi-resource-lockstep, which builds the plugin's own Python
# environment beside itself with uv on first start (see that file). It is Python, not a binary:
# the machine needs uv and a Python 3.11.
#
# Usage: scripts/plugin/build.sh [OUT_DIR]   (default build/plugin); stdout: the archive's path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/build/plugin}" && cd "${1:-$ROOT/build/plugin}" && pwd)"
UV="$(command -v uv || echo "$HOME/.cache/lockstep/tools/bin/uv")"
[ -x "$UV" ] || { echo "lockstep plugin: uv is not on PATH (run \`make setup\`)" >&2; exit 1; }
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -1)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
"$UV" build --quiet --wheel --out-dir "$stage" "$ROOT" >&2
"$UV" export --quiet --frozen --no-dev --no-hashes --no-emit-project --project "$ROOT" -o "$stage/requirements.txt" >&2
rm -f "$stage/.gitignore"  # uv build writes one into its out dir
install -m 755 "$ROOT/scripts/plugin/pulumi-resource-lockstep" "$stage/pulumi-resource-lockstep"
archive="$OUT/pulumi-resource-lockstep-v$VERSION-linux-amd64.tar.gz"
tar -czf "$archive" -C "$stage" .
echo "lockstep plugin: $archive (install: pulumi plugin install resource lockstep $VERSION --file $archive)" >&2
echo "$archive"
