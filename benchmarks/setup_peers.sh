#!/usr/bin/env bash
# The benchmark's own environment: the peers (LiteLLM's proxy, vllm-router) plus matplotlib and
# py-spy, in benchmarks/.venv-peers. Never in respublica's .venv or dependencies: a peer's pins
# must not move respublica's. A peer that fails to install is left out; the runner then reports it
# as "unavailable: <reason>" (the reason is kept in benchmarks/.venv-peers/<peer>.failed).
#
#   bash benchmarks/setup_peers.sh            # newest versions that install
#   LITELLM_SPEC='litellm[proxy]==1.108.7' bash benchmarks/setup_peers.sh
set -uo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
VENV=${PEERS_VENV:-.venv-peers}
# 1.107.0 is the release that was published compromised; never that one.
LITELLM_SPEC=${LITELLM_SPEC:-'litellm[proxy]!=1.107.0'}
ROUTER_SPEC=${ROUTER_SPEC:-vllm-router}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" || { echo "cannot create $VENV with $PYTHON" >&2; exit 1; }
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# The harness itself (load generator, fake upstream, chart) needs these; without them nothing runs.
"$VENV/bin/python" -m pip install --quiet aiohttp uvloop pyyaml matplotlib py-spy || exit 1

install_peer() {  # name, pip spec
  local name=$1 spec=$2 log="$VENV/$1.log"
  rm -f "$VENV/$name.failed"
  if "$VENV/bin/python" -m pip install "$spec" >"$log" 2>&1; then
    echo "==> $name: $("$VENV/bin/python" -m pip show "${spec%%[\[=!<>]*}" 2>/dev/null | sed -n 's/^Version: //p')"
  else
    tail -n 3 "$log" | tr '\n' ' ' | cut -c1-300 >"$VENV/$name.failed"
    echo "==> $name: unavailable ($(cat "$VENV/$name.failed"))" >&2
  fi
}

install_peer litellm "$LITELLM_SPEC"
install_peer vllm-router "$ROUTER_SPEC"
exit 0
