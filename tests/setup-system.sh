#!/usr/bin/env bash
# What `make test` needs from the machine itself, beyond the .venv and node modules the Makefile makes.
# Exactly what the suites use:
#   - Debian's chromium at /usr/bin/chromium (tests/test_playground.py launches that path, no other);
#   - nginx on PATH or at /usr/sbin/nginx (tests/test_deploy.py's two-replica topology);
#   - a Redis answering at 127.0.0.1:6379 (store, bus, callers and deploy suites; dbs 11-15), or at
#     FALGATE_TEST_REDIS (host:port);
#   - redis-server on PATH: tests/faults/ starts Redis servers of its own, which it kills and freezes.
# As root it installs what is missing (one apt-get update, then apt-get install) and starts Redis if none
# answers. As anyone else it starts Redis if redis-server is installed, and otherwise stops with one message
# naming what is missing and the command that installs it, before pytest runs. Nothing missing: no apt-get,
# so a repeated `make test` spends well under a second here. Python 3.11+ and Node 20+ with npm are assumed,
# not installed: checked first, and named if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CHROMIUM=/usr/bin/chromium
REDIS_ADDRESS=${FALGATE_TEST_REDIS:-127.0.0.1:6379}
REDIS_HOST=${REDIS_ADDRESS%:*}
REDIS_PORT=${REDIS_ADDRESS##*:}

say() { printf 'setup-system: %s\n' "$*" >&2; }

redis_answers() {
  # bash's /dev/tcp, so that no redis-cli (or venv) is needed to ask. Only +PONG counts: a Redis that wants
  # a password (-NOAUTH) is not one the tests can use.
  timeout 2 bash -c "exec 3<>/dev/tcp/$REDIS_HOST/$REDIS_PORT && printf 'PING\r\n' >&3 \
    && IFS= read -r reply <&3 && [[ \$reply == '+PONG'* ]]" 2>/dev/null
}

# An executable on PATH, as shutil.which finds it (bash's `command -v` also names a non-executable match).
have() { local found; found=$(command -v "$1" 2>/dev/null) && [[ -x $found && ! -d $found ]]; }
have_nginx() { have nginx || [[ -x /usr/sbin/nginx ]]; }

# --- what is assumed, not installed: Python 3.11+ and Node 20+ (with npm) --------------------------------
assumed=()
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  assumed+=("Python 3.11+ as '$PYTHON' (Debian 12+: apt-get install python3 python3-venv; or make test PYTHON=...)")
fi
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if (( node_major < 20 )) || ! have npm; then
  assumed+=("Node 20+ with npm, found $(node --version 2>/dev/null || echo 'no node')$(have npm || echo ', no npm') (nodejs.org, or Debian 13+: apt-get install nodejs npm)")
fi
if (( ${#assumed[@]} )); then
  joined=$(printf '%s; ' "${assumed[@]}")
  say "make test assumes these are installed, and they are not: ${joined%; }." \
    "Install them, then run make test again."
  exit 1
fi

# --- what is missing ---------------------------------------------------------------------------------------
packages=()
[[ -x $CHROMIUM ]] || packages+=(chromium)
have_nginx || packages+=(nginx)
# redis-server itself even when a Redis already answers: the fault suite starts private ones to kill and freeze.
have redis-server || packages+=(redis-server redis-tools)
# Debian's python3 makes venvs only with python3-venv (ensurepip); needed only while there is no .venv yet.
if [[ ! -x $VENV/bin/python ]] && ! "$PYTHON" -m ensurepip --version >/dev/null 2>&1 \
   && [[ $(readlink -f "$(command -v "$PYTHON")") == /usr/bin/python3* ]]; then
  packages+=(python3-venv)
fi

if (( ${#packages[@]} )); then
  if (( EUID == 0 )) && have apt-get; then
    say "installing ${packages[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  else
    # Only apt-get needs root: once the packages are there, this script (as you) starts Redis itself.
    say "make test needs Debian packages that are missing: ${packages[*]}. Install them with" \
      "\`sudo apt-get install -y --no-install-recommends ${packages[*]}\`, then run make test again."
    exit 1
  fi
fi

# Installed, yet still not where the tests look: say so here rather than as a test failure.
[[ -x $CHROMIUM ]] || { say "$CHROMIUM is still missing after installing Debian's chromium"; exit 1; }
have_nginx || { say "nginx is still missing (not on PATH, not /usr/sbin/nginx) after installing it"; exit 1; }

# --- Redis on 127.0.0.1:6379, started here if none answers: in memory only, no persistence -----------------
if ! redis_answers; then
  log="${TMPDIR:-/tmp}/falgate-test-redis-$(id -u).log"
  say "starting redis-server on $REDIS_HOST:$REDIS_PORT (no persistence; log $log)"
  redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "${TMPDIR:-/tmp}" --logfile "$log"
  for _ in $(seq 50); do redis_answers && break; sleep 0.1; done
  if ! redis_answers; then
    say "redis-server did not answer PING on $REDIS_HOST:$REDIS_PORT within 5 s; its log ($log) ends with:"
    tail -n 5 "$log" >&2 2>/dev/null || true
    exit 1
  fi
fi
