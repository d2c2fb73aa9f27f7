#!/usr/bin/env bash
# lockstep's SDKs from schema.json, with Pulumi's own codegen, compiled:
#   1. sdkgen (main.go: pkg/v3/codegen/nodejs and /go at the CLI's version) writes OUT/nodejs, OUT/go;
#   2. TypeScript: `tsc` builds the SDK (@pulumi/pulumi etc. pinned in package.json/package-lock.json),
#      then examples/typescript/index.ts is type-checked against the SDK's emitted declarations;
#   3. Go: `go build` + `go vet` of the SDK and gosdk/example (the same program in Go) with the Go SDK
#      github.com/pulumi/pulumi/sdk/v3 from the proxy (gosdk/go.mod + go.sum).
# Usage: sdkgen/build.sh [OUT] [TS_PROGRAM]   (defaults: build/sdk, examples/typescript/index.ts)
# Each step says what it did in one line; a failure names the step, exit 1.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
OUT="$(mkdir -p "${1:-$ROOT/build/sdk}" && cd "${1:-$ROOT/build/sdk}" && pwd)"
PROGRAM="$(readlink -f "${2:-$ROOT/examples/typescript/index.ts}")"
log="$OUT/log"
: >"$log"

fail() {
  echo "sdks: $1 failed: $(grep -v '^go: downloading' "$log" | grep . | tail -1) (full log: $log)" >&2
  exit 1
}
step() { echo "sdks: $1" >&2; }

go build -C "$HERE" -buildvcs=false -o "$OUT/bin/sdkgen" . >>"$log" 2>&1 || fail "go build of sdkgen"
rm -rf "$OUT/nodejs" "$OUT/go"
"$OUT/bin/sdkgen" gen "$ROOT/schema.json" "$OUT" >>"$log" 2>&1 || fail "codegen from schema.json"
step "generated $OUT/nodejs and $OUT/go from schema.json (Pulumi codegen v3.274.1)"

# npm ci only when the lock changed since the last install.
if ! cmp -s "$HERE/package-lock.json" "$HERE/node_modules/.lockstep-installed" 2>/dev/null; then
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error) >>"$log" 2>&1 || fail "npm ci in sdkgen/"
  cp "$HERE/package-lock.json" "$HERE/node_modules/.lockstep-installed"
fi
ln -sfn "$HERE/node_modules" "$OUT/node_modules"
tsc="$HERE/node_modules/.bin/tsc"
"$tsc" -p "$OUT/nodejs" >>"$log" 2>&1 || fail "tsc of the TypeScript SDK"
mkdir -p "$OUT/typecheck"
cat >"$OUT/typecheck/tsconfig.json" <<EOF
{
  "extends": "$(dirname "$PROGRAM")/tsconfig.json",
  "compilerOptions": {
    "noEmit": true,
    "baseUrl": ".",
    "paths": { "@pulumi/lockstep": ["$OUT/nodejs/bin/index.d.ts"] },
    "typeRoots": ["$OUT/node_modules/@types"]
  },
  "files": ["$PROGRAM"]
}
EOF
"$tsc" -p "$OUT/typecheck" >>"$log" 2>&1 || fail "type-check of $PROGRAM against the TypeScript SDK"
step "TypeScript SDK compiled (tsc $("$tsc" --version | cut -d' ' -f2)); $PROGRAM type-checks against it"

cp "$HERE/gosdk/go.mod" "$HERE/gosdk/go.sum" "$OUT/go/"
cp -r "$HERE/gosdk/example" "$OUT/go/"
(cd "$OUT/go" && go build -buildvcs=false ./... && go vet ./...) >>"$log" 2>&1 || fail "go build of the Go SDK"
step "Go SDK and its example compiled (go build + go vet, github.com/pulumi/pulumi/sdk/v3 v3.274.1)"
