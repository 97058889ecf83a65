#!/usr/bin/env bash
# Runs a whole fedmoe federation on this machine: a coordinator with throwaway PKI on loopback
# ports, and three organisations' client daemons, each enrolled with its own one-time token.
#
#   deploy/quickstart.sh            build if needed, run, print the federation, shut down
#   deploy/quickstart.sh --keep     leave the federation running until Ctrl-C
#
# Installs missing Debian packages first (deploy/install-deps.sh). Everything it starts is
# stopped when it exits, however it exits, and its state lives in a fresh temporary directory,
# so running it again starts from scratch.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
keep=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n==> %s\n' "$*"; }

"$root/deploy/install-deps.sh"
say "building (build/, Release)"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build" -j"${FEDMOE_JOBS:-2}" --target fedmoe-coordinator fedmoe-client
bin=$root/build/bin

work=$(mktemp -d -t fedmoe-quickstart-XXXXXX)
pids=()
cleanup() {
  local status=$?
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
mtls=127.0.0.1:$(free_port)
enroll=127.0.0.1:$(free_port)
state=$work/coordinator

say "creating federation 'quickstart' (CA, server and admin certificates) in $state"
"$bin/fedmoe-coordinator" init --federation quickstart --state-dir "$state" \
  --listen "$mtls" --enroll-listen "$enroll"

say "starting the coordinator: mTLS on $mtls, enrollment on $enroll"
"$bin/fedmoe-coordinator" serve --config "$state/coordinator.yaml" 2>"$work/coordinator.log" &
pids+=($!)
for _ in $(seq 1 100); do
  "$bin/fedmoe-coordinator" status --state-dir "$state" >/dev/null 2>&1 && break
  sleep 0.1
done
"$bin/fedmoe-coordinator" status --state-dir "$state" >/dev/null

json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

for org in acme-bank globex-insurance initech-health; do
  say "enrolling $org"
  token_json=$("$bin/fedmoe-coordinator" token create --client-id "$org" --ttl 1h --json \
    --state-dir "$state")
  token=$(json_field token <<<"$token_json")
  fingerprint=$(json_field ca_fingerprint <<<"$token_json")
  echo "    token for $org created; CA fingerprint $fingerprint"
  "$bin/fedmoe-client" enroll --coordinator "$enroll" --token "$token" \
    --ca-fingerprint "$fingerprint" --state-dir "$work/$org" 2>"$work/$org-enroll.log"
  "$bin/fedmoe-client" run --config "$work/$org/client.yaml" 2>"$work/$org.log" &
  pids+=($!)
done

say "waiting for the three daemons to come online"
online=0
for _ in $(seq 1 100); do
  online=$("$bin/fedmoe-coordinator" status --state-dir "$state" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("clients_online", 0))')
  [[ "$online" == 3 ]] && break
  sleep 0.1
done

say "fedmoe-coordinator clients list"
"$bin/fedmoe-coordinator" clients list --state-dir "$state"
say "fedmoe-coordinator status"
"$bin/fedmoe-coordinator" status --state-dir "$state"
say "fedmoe-client status (acme-bank)"
"$bin/fedmoe-client" status --state-dir "$work/acme-bank"

if [[ "$online" != 3 ]]; then
  echo "quickstart: only $online of 3 clients came online; logs are in $work" >&2
  trap - EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  exit 1
fi

if ((keep)); then
  say "federation running; Ctrl-C to stop (state in $work)"
  wait
fi
say "shutting down"
