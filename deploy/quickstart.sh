#!/usr/bin/env bash
# Runs a whole fedmoe federation on this machine (DESIGN §9): a coordinator with throwaway PKI
# on loopback ports, and three organisations' client daemons, each enrolled with its own
# one-time token and holding its own private corpus (deploy/corpora: finance, IT support,
# contracts). The federation runs five rounds with mutual TLS, SecAgg+ and distributed DP
# (discrete Gaussian noise added by the clients before masking), then prints each domain's
# held-out loss before and after, the ε spent, bytes sent per client per round and the
# federation-wide expert load. The last line is one JSON object.
#
#   deploy/quickstart.sh            build if needed, run five rounds, summarise, shut down
#   deploy/quickstart.sh --keep     leave the federation running until Ctrl-C
#   FEDMOE_ROUNDS=N                 run N rounds instead of five
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
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
rounds=${FEDMOE_ROUNDS:-5}

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
  if ((status != 0)); then
    echo "quickstart: failed; the last coordinator log lines:" >&2
    tail -5 "$work/coordinator.log" >&2 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

domains=(finance it_support contracts)
orgs=(acme-bank globex-it initech-legal)

say "splitting each domain's corpus: 90% private training data, 10% held out for evaluation"
for domain in "${domains[@]}"; do
  mkdir -p "$work/data/$domain"
  python3 - "$root/deploy/corpora/$domain/documents.txt" "$work/data/$domain/documents.txt" \
    "$work/heldout-$domain.txt" <<'PY'
import sys
paragraphs = [p for p in open(sys.argv[1], encoding="utf-8").read().split("\n\n") if p.strip()]
cut = len(paragraphs) * 9 // 10
open(sys.argv[2], "w", encoding="utf-8").write("\n\n".join(paragraphs[:cut]) + "\n")
open(sys.argv[3], "w", encoding="utf-8").write("\n\n".join(paragraphs[cut:]) + "\n")
PY
done

say "preparing the initial global model (a small Mixtral-layout MoE: 2 layers, 4 experts, top-2)"
"$bin/fedmoe-client" model init --config "$root/deploy/quickstart-model.json" --out "$work/init" \
  --seed 7 >/dev/null
# A general-purpose base: a short pre-training on a public text that no client owns (the
# project's own documentation), so that the federation fine-tunes a model that already
# speaks English rather than noise.
mkdir -p "$work/public"
cat "$root/README.md" "$root/docs/"*.md > "$work/public/public.md"
# Every tensor trains here (the default trains only experts and routers, as a federation does).
printf 'trainable: [all]\n' >"$work/base-train.yaml"
"$bin/fedmoe-client" train --model "$work/init" --data "$work/public" --out "$work/base" \
  --config "$work/base-train.yaml" --steps 400 --batch-size 8 --seq-len 64 --lr 0.01 \
  --log-every 1000 >"$work/base-train.log"
echo "    base model: $(tail -1 "$work/base-train.log")"

mtls=127.0.0.1:$(free_port)
enroll=127.0.0.1:$(free_port)
metrics=127.0.0.1:$(free_port)
state=$work/coordinator

say "creating federation 'quickstart' (CA, server and admin certificates) in $state"
"$bin/fedmoe-coordinator" init --federation quickstart --state-dir "$state" \
  --listen "$mtls" --enroll-listen "$enroll" >/dev/null
# The round policy: every client each round, experts and routers trained, distributed DP.
python3 - "$state/coordinator.yaml" "$work/base" "$rounds" "$metrics" <<'PY'
import sys
path, base, rounds, metrics = sys.argv[1:]
text = open(path).read()
text = text.replace('listen: "127.0.0.1:9464"', f'listen: "{metrics}"')
text = text[: text.index("\nmodel:\n")] + f"""
model:
  initial: {base}
rounds:
  min_clients: 3
  max_clients: 3
  sampling_rate: 1.0
  interval: 1s
  max_rounds: {rounds}
  timeouts:
    train: 5m
  trainable: [experts, router]
  # At 0.01 the merged model came out worse than it started in one run of three (held-out
  # 2.72 -> 2.75; the others 2.53, 2.48); at 0.004 three runs gave 2.450-2.457.
  training:
    steps: 40
    batch_size: 8
    seq_len: 64
    learning_rate: 0.004
    min_learning_rate_ratio: 0.1
  server_optimizer:
    kind: fedavg
    learning_rate: 1.0
privacy:
  mode: distributed
  mechanism: discrete_gaussian
  clip_norm: 1.0
  # With three clients and ~230k values per update, noise that keeps epsilon small would
  # drown the signal: this demo has no privacy to speak of, and says so. Its epsilon is
  # infinite: once the RDP epsilon passes ~45, the noise samplers' finite precision, which
  # the ledger charges to delta, takes all of delta. Real federations have many more clients
  # per round, which is what makes small epsilon affordable.
  noise_multiplier: 0.01
  delta: 1.0e-5
  ring_bits: 32
"""
open(path, "w").write(text)
PY

say "starting the coordinator: mTLS on $mtls, enrollment on $enroll, metrics on http://$metrics/metrics"
"$bin/fedmoe-coordinator" serve --config "$state/coordinator.yaml" 2>"$work/coordinator.log" &
pids+=($!)
for _ in $(seq 1 100); do
  "$bin/fedmoe-coordinator" status --state-dir "$state" >/dev/null 2>&1 && break
  sleep 0.1
done
"$bin/fedmoe-coordinator" status --state-dir "$state" >/dev/null

# Three daemons on one host: each gets a third of the cores (at least one), instead of each
# taking them all (threads: 0) and the three fighting over them.
share=$(( $(nproc) / 3 ))
(( share >= 1 )) || share=1
for i in 0 1 2; do
  org=${orgs[$i]}
  domain=${domains[$i]}
  say "enrolling $org (private data: $domain)"
  token_json=$("$bin/fedmoe-coordinator" token create --client-id "$org" --ttl 1h --json \
    --state-dir "$state")
  token=$(json_field token <<<"$token_json")
  fingerprint=$(json_field ca_fingerprint <<<"$token_json")
  echo "    token for $org created; CA fingerprint $fingerprint"
  "$bin/fedmoe-client" enroll --coordinator "$enroll" --token "$token" \
    --ca-fingerprint "$fingerprint" --state-dir "$work/$org" --data "$work/data/$domain" \
    2>"$work/$org-enroll.log" | sed 's/^/    /'
  client_metrics=127.0.0.1:$(free_port)
  sed -i "s|listen: \"127.0.0.1:9465\"|listen: \"$client_metrics\"|" "$work/$org/client.yaml"
  sed -i "s|threads: 0|threads: $share|" "$work/$org/client.yaml"
  grep -q "threads: $share" "$work/$org/client.yaml" ||
    { echo "quickstart: cannot set threads in $org's client.yaml" >&2; exit 1; }
  echo "    $org's metrics: http://$client_metrics/metrics; $share CPU thread(s)"
  "$bin/fedmoe-client" run --config "$work/$org/client.yaml" 2>"$work/$org.log" &
  pids+=($!)
done

say "running $rounds rounds (each: sync model, train 40 steps locally, clip, noise, mask, merge)"
committed=0
last_line=0
for _ in $(seq 1 1200); do
  # Progress, from the coordinator's structured log.
  python3 - "$work/coordinator.log" "$last_line" >"$work/progress" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
start = int(sys.argv[2])
for line in lines[start:]:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    ev = e.get("event")
    if ev == "round_started":
        print(f"    round {e['round_id']}: cohort of {e['cohort']} selected, training from model v{e['base_model_version']}")
    elif ev == "round_stage":
        print(f"    round {e['round_id']}: {e['stage'].lower()} ({e['participants']} participants)")
    elif ev == "round_committed":
        print(f"    round {e['round_id']}: committed model v{e['model_version']} "
              f"({e['survivors']} survivors, epsilon {float(e['epsilon']):.4g}, {e['round_seconds']:.1f}s)")
    elif ev == "round_aborted":
        print(f"    round {e['round_id']}: ABORTED: {e['reason']}")
print(f"#{len(lines)}")
PY
  grep -v '^#' "$work/progress" || true
  last_line=$(grep '^#' "$work/progress" | tr -d '#')
  committed=$(grep -c '"event":"round_committed"' "$work/coordinator.log" || true)
  ((committed >= rounds)) && break
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "quickstart: a process exited early" >&2; exit 1; }
  done
  sleep 0.5
done
if ((committed < rounds)); then
  echo "quickstart: only $committed of $rounds rounds committed" >&2
  exit 1
fi

say "fedmoe-coordinator rounds list"
"$bin/fedmoe-coordinator" rounds list --state-dir "$state"
say "fedmoe-coordinator privacy report"
"$bin/fedmoe-coordinator" privacy report --state-dir "$state"
say "fedmoe-client status (${orgs[0]})"
"$bin/fedmoe-client" status --state-dir "$work/${orgs[0]}"

say "held-out loss per domain, initial vs final global model"
final_version=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["model_version"])' \
  <<<"$("$bin/fedmoe-coordinator" status --state-dir "$state" --json)")
losses=()
for domain in "${domains[@]}"; do
  before=$(json_field loss <<<"$("$bin/fedmoe-client" model eval --model "$state/models/v1" \
    --data "$work/heldout-$domain.txt" --seq-len 64)")
  after=$(json_field loss <<<"$("$bin/fedmoe-client" model eval \
    --model "$state/models/v$final_version" --data "$work/heldout-$domain.txt" --seq-len 64)")
  printf '    %-12s %.4f -> %.4f nats\n' "$domain" "$before" "$after"
  losses+=("$before" "$after")
done

python3 - "$work/coordinator.log" "$rounds" "${losses[@]}" "$work" "${orgs[@]}" <<'PY'
import json, sys
log, rounds = sys.argv[1], int(sys.argv[2])
losses = [float(x) for x in sys.argv[3:9]]
work, orgs = sys.argv[9], sys.argv[10:]
events = []
for line in open(log):
    try:
        events.append(json.loads(line))
    except ValueError:
        pass
commits = [e for e in events if e.get("event") == "round_committed"]
last = commits[-1]
sent = []
for org in orgs:
    for line in open(f"{work}/{org}.log"):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "round_finished" and e.get("bytes_sent", 0) > 0:
            sent.append(e["bytes_sent"])
bytes_per = sum(sent) / len(sent) if sent else 0
print(f"\n==> federation-wide expert load (share of routing weight, last round; noised by DP)")
for part in last["expert_load"].split("; "):
    print(f"    {part}")
print(f"\n==> summary: {rounds} rounds, 3 clients, epsilon {float(last['epsilon']):.4g} at delta {last['delta']:g}, "
      f"{bytes_per/1e6:.2f} MB sent per client per round")
before = sum(losses[0::2]) / 3
after = sum(losses[1::2]) / 3
print(json.dumps({"rounds": rounds, "clients": 3, "loss_before": round(before, 4),
                  "loss_after": round(after, 4), "epsilon": last["epsilon"],
                  "delta": last["delta"], "bytes_per_client_round": round(bytes_per)}))
PY

if ((keep)); then
  say "federation running; Ctrl-C to stop (state in $work)"
  wait
fi
