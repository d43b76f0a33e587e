#!/usr/bin/env bash
# Build the otelcol-leak collector distribution from collector/builder.yaml with the
# OpenTelemetry Collector Builder, cached by a hash of the manifest, this script and the Go version:
#
#   ${OTEL_LEAK_CACHE:-$HOME/.cache/otel-leak}/collector/<hash>/otelcol-leak
#
# The last line on stdout is the binary's path; everything else goes to stderr.
# A second run with the cache in place is instant.
#
#   collector/build.sh                # build if needed, print the path
#   collector/build.sh --cached-only  # print the path if already built, else exit 3 (no build)
#   collector/build.sh --hash         # print the cache key only
#
# Needs Go >= 1.26 and the Go module proxy. Installs the builder with
# `go install go.opentelemetry.io/collector/cmd/builder@v0.159.0` if it is missing or another version.
set -euo pipefail

OCB_VERSION=v0.159.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
manifest="$here/builder.yaml"
name=otelcol-leak

command -v go >/dev/null || { echo "build.sh: go not found on PATH (need Go >= 1.26)" >&2; exit 2; }

hash=$({ cat "$manifest" "$here/build.sh"; go version; } | sha256sum | cut -c1-16)
cache_root="${OTEL_LEAK_CACHE:-$HOME/.cache/otel-leak}/collector"
out="$cache_root/$hash"
bin="$out/$name"

case "${1:-}" in
  --hash) echo "$hash"; exit 0 ;;
  --cached-only) if [[ -x $bin ]]; then echo "$bin"; exit 0; else echo "build.sh: $name not built yet (expected $bin)" >&2; exit 3; fi ;;
  "") ;;
  *) echo "usage: $0 [--cached-only|--hash]" >&2; exit 2 ;;
esac

if [[ -x $bin ]]; then echo "$bin"; exit 0; fi

mkdir -p "$cache_root"
# One build per hash at a time (several engineers / CI jobs may call this concurrently).
exec 9>"$cache_root/.lock-$hash"
flock 9
if [[ -x $bin ]]; then echo "$bin"; exit 0; fi

gobin=$(go env GOBIN)
[[ -n $gobin ]] || gobin="$(go env GOPATH)/bin"
builder="${OCB:-$gobin/builder}"
if ! [[ -x $builder ]] || ! "$builder" version 2>/dev/null | grep -q "$OCB_VERSION"; then
  echo "build.sh: installing builder $OCB_VERSION" >&2
  GOBIN="$gobin" go install "go.opentelemetry.io/collector/cmd/builder@$OCB_VERSION" >&2
  builder="$gobin/builder"
fi

work=$(mktemp -d "$cache_root/.build-$hash.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$manifest" "$work/builder.yaml"
start=$(date +%s)
echo "build.sh: building $name ($hash) in $work; this takes minutes on a cold Go cache" >&2
(cd "$work" && "$builder" --config builder.yaml --ldflags="-s -w") >&2
mkdir -p "$out"
cp "$work/_build/$name" "$bin.tmp"
cp "$manifest" "$out/builder.yaml"
mv "$bin.tmp" "$bin"
echo "build.sh: built $bin in $(( $(date +%s) - start ))s" >&2
echo "$bin"
