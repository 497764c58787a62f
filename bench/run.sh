#!/usr/bin/env bash
# Load benchmark of falgate vs @fal-ai/server-proxy (Express adapter). See bench/README.md.
#
#   bash bench/run.sh                         # everything, default 3 s warm-up + 10 s at 32 connections
#   BENCH_ROUNDS=3 BENCH_PICK=best bash bench/run.sh
#   bash bench/run.sh --targets express       # only the Express proxy
#   bash bench/run.sh --profile               # also profile falgate with py-spy (pip install py-spy)
#   BENCH_ROUNDS=5 bash bench/run.sh --compare REV   # falgate at REV vs this tree, alternately (no Express)
#
# Installs what it needs: wrk (apt-get, when missing) and bench/express-proxy/node_modules (npm ci).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"

if ! command -v node >/dev/null 2>&1; then
  echo "bench: node (>= 18) is required for the fake upstream and the Express proxy" >&2
  exit 2
fi

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk >&2
fi

compare="${BENCH_COMPARE:-}"
for arg in "$@"; do case "$arg" in --compare|--compare=*) compare=1 ;; esac; done

proxy_dir="$here/express-proxy"
if [ -n "$compare" ]; then
  :  # compare mode (falgate old vs new) does not run the Express proxy
elif [ ! -d "$proxy_dir/node_modules/@fal-ai/server-proxy" ] || [ ! -d "$proxy_dir/node_modules/undici" ] \
   || [ "$proxy_dir/package-lock.json" -nt "$proxy_dir/node_modules/.package-lock.json" ]; then
  echo "bench: npm ci in bench/express-proxy" >&2
  (cd "$proxy_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
exec "$py" "$here/run.py" "$@"
