#!/usr/bin/env bash
# Build the trace store the e2e tests (and a laptop setup) send spans to: Jaeger v2, the
# collector-based all-in-one (in-memory storage, query HTTP API /api/traces/<traceid>), from the Go
# module proxy, cached by a hash of this script and the Go version:
#
#   ${OTEL_LEAK_CACHE:-$HOME/.cache/otel-leak}/tracestore/<hash>/jaeger
#
# The last line on stdout is the binary's path; everything else goes to stderr.
#
#   collector/build-tracestore.sh                # build if needed, print the path
#   collector/build-tracestore.sh --cached-only  # print the path if built, else exit 3
#
# Jaeger tags each release twice (v2.x.y and v1.x.y on the same commit). Its Go module path has no
# /v2 suffix, so only the v1.x.y tag is a valid Go module version; its cmd/jaeger IS the v2 binary.
# v1.76.0 is the newest version the module proxy serves. Jaeger's go.mod has a replace directive, so
# `go install ...@version` refuses it: we build from a throw-away wrapper module that requires
# Jaeger and copies its replace lines. Run it with collector/jaeger.yaml.
set -euo pipefail

JAEGER_MODULE=github.com/jaegertracing/jaeger
JAEGER_VERSION=v1.76.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

command -v go >/dev/null || { echo "build-tracestore.sh: go not found on PATH" >&2; exit 2; }

hash=$({ cat "$here/build-tracestore.sh"; go version; } | sha256sum | cut -c1-16)
cache_root="${OTEL_LEAK_CACHE:-$HOME/.cache/otel-leak}/tracestore"
out="$cache_root/$hash"
bin="$out/jaeger"

case "${1:-}" in
  --hash) echo "$hash"; exit 0 ;;
  --cached-only) if [[ -x $bin ]]; then echo "$bin"; exit 0; else echo "build-tracestore.sh: jaeger not built yet (expected $bin)" >&2; exit 3; fi ;;
  "") ;;
  *) echo "usage: $0 [--cached-only|--hash]" >&2; exit 2 ;;
esac

if [[ -x $bin ]]; then echo "$bin"; exit 0; fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock-$hash"
flock 9
if [[ -x $bin ]]; then echo "$bin"; exit 0; fi

work=$(mktemp -d "$cache_root/.build-$hash.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
echo "build-tracestore.sh: building jaeger $JAEGER_VERSION in $work; this takes minutes on a cold Go cache" >&2
cd "$work"
gomod=$(go mod download -json "$JAEGER_MODULE@$JAEGER_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[[ -f $gomod ]] || { echo "build-tracestore.sh: could not fetch $JAEGER_MODULE@$JAEGER_VERSION" >&2; exit 1; }
{
  echo "module otel-leak.local/tracestore"
  echo
  echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')"
  echo
  echo "require $JAEGER_MODULE $JAEGER_VERSION"
  echo
  grep -E '^replace ' "$gomod" || true
} > go.mod
go get "$JAEGER_MODULE/cmd/jaeger@$JAEGER_VERSION" >&2
go build -trimpath -ldflags="-s -w" -o jaeger "$JAEGER_MODULE/cmd/jaeger" >&2
mkdir -p "$out"
cp jaeger "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "build-tracestore.sh: built $bin in $(( $(date +%s) - start ))s" >&2
echo "$bin"
