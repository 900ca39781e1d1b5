#!/usr/bin/env bash
# Builds the LiveKit server the real-room tests and bench/bench_room.py run against, once,
# and puts it at .venv/bin/livekit-server (where the tests look for it).
#
#  * Pinned: github.com/livekit/livekit-server v1.13.5, main package cmd/server, built with Go
#    from the Go module proxy. v1.13.5 needs Go >= 1.26 (an older `go` fetches that toolchain
#    from the proxy by itself: GOTOOLCHAIN=auto) and has no `replace` directives, which
#    `go install pkg@version` refuses (HEAD, v1.13.0 and v1.13.1 have some).
#  * Cached: the binary is kept under ${LOCALTTS_CACHE_DIR:-~/.cache/localtts}; when it is
#    there this takes well under a second. The first build takes about 5 minutes on 2 cores.
#  * Without Go this prints how to get the server and exits 0: the real-room tests then
#    skip, saying the same. With Go, a failed build fails this script (and CI).
set -euo pipefail

version="v1.13.5"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${LOCALTTS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/localtts}/livekit-server-$version"
target="$root/.venv/bin/livekit-server"

if [ ! -x "$cache/server" ]; then
    if ! command -v go >/dev/null 2>&1; then
        echo "localtts: Go is not installed, so livekit-server $version cannot be built and the" \
             "real-room tests will skip. Install Go (https://go.dev/dl/), then re-run" \
             "'bash tests/livekit-server.sh'; or put a livekit-server binary on PATH." >&2
        exit 0
    fi
    echo "localtts: building livekit-server $version from the Go module proxy (once, ~5 min)"
    mkdir -p "$cache"
    GOBIN="$cache" GOFLAGS="${GOFLAGS:--buildvcs=false}" \
        go install "github.com/livekit/livekit-server/cmd/server@$version"
fi
mkdir -p "$(dirname "$target")"
# a copy, not a link: the cache may be cleaned while the venv lives on
if ! cmp -s "$cache/server" "$target"; then cp "$cache/server" "$target"; fi
echo "localtts: $("$target" --version) at .venv/bin/livekit-server"
