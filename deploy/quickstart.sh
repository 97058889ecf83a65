#!/usr/bin/env bash
# Runs a whole fedmoe federation on this machine (DESIGN §9): a coordinator with throwaway PKI
# on loopback ports, and three organisations' client daemons, each enrolled with its own
# one-time token and holding its own private corpus (deploy/corpora: finance, IT support,
# contracts). The federation runs five rounds with mutual TLS, SecAgg+, record-level DP on
# every site (DP-SGD: each site clips every record's gradient and adds Gaussian noise at each
# local step, and charges its own ledger) and distributed client-level DP (discrete Gaussian
# noise added by the clients before masking), then prints each domain's held-out loss before
# and after, each site's record-level ε, the client-level ε, bytes sent per client per round
# and the federation-wide expert load. The last line is one JSON object.
#
#   deploy/quickstart.sh              build if needed, run five rounds, summarise, shut down
#   deploy/quickstart.sh --keep       leave the federation running until Ctrl-C
#   deploy/quickstart.sh --no-dp-sgd  the same run without DP-SGD, to see what it costs
#   deploy/quickstart.sh --adapters   federate LoRA adapters (rank 16 on every linear) over an
#                                     INT8 copy of the base instead of whole experts; personal
#                                     models, built over whole global models, are then off
#   deploy/quickstart.sh --personal=MODE
#                                     each site's personal model: private_experts (the
#                                     default: 4 private experts per layer, trained after each
#                                     committed round), ditto, or none
#   FEDMOE_ROUNDS=N                   run N rounds instead of five
#   FEDMOE_QUICKSTART_OUT=DIR         keep the base, final global and personal models, the
#                                     data and held-out splits in DIR (bench/personalization.sh)
#
# Installs missing Debian packages first (deploy/install-deps.sh). Everything it starts is
# stopped when it exits, however it exits, and its state lives in a fresh temporary directory,
# so running it again starts from scratch.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
keep=0
# DP-SGD's noise multiplier: at 32 of about 780 records per step, 200 steps in five rounds cost
# each site a record-level ε of 7.1 at δ = 0.1/records (`fedmoe-client privacy plan`).
record_noise=0.75
personal=private_experts
adapters=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    --adapters) adapters=1 ;;
    --no-dp-sgd) record_noise=0 ;;
    --personal=private_experts|--personal=ditto|--personal=none) personal=${arg#--personal=} ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
rounds=${FEDMOE_ROUNDS:-5}
((adapters)) && personal=none

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
# What the federation starts from: the base itself, or (--adapters) an INT8 copy held frozen,
# which every site provisions and the round spec names by content hash.
initial=$work/base
adapter_block=""
if ((adapters)); then
  initial=$work/base-int8
  "$bin/fedmoe-client" model quantize --model "$work/base" --int8 --out "$initial" >/dev/null
  echo "    INT8 base for the adapters: $(json_field sha256 <<<"$("$bin/fedmoe-client" model hash --model "$initial")")"
  adapter_block=$'  adapters:\n    enabled: true\n    rank: 16\n    alpha: 32\n    targets: [all]\n'
fi

mtls=127.0.0.1:$(free_port)
enroll=127.0.0.1:$(free_port)
metrics=127.0.0.1:$(free_port)
state=$work/coordinator

say "creating federation 'quickstart' (CA, server and admin certificates) in $state"
"$bin/fedmoe-coordinator" init --federation quickstart --state-dir "$state" \
  --listen "$mtls" --enroll-listen "$enroll" >/dev/null
# The round policy: every client each round, experts and routers trained, distributed DP.
python3 - "$state/coordinator.yaml" "$initial" "$rounds" "$metrics" "$record_noise" \
  "$adapter_block" <<'PY'
import sys
path, base, rounds, metrics, record_noise, adapter_block = sys.argv[1:]
text = open(path).read()
text = text.replace('listen: "127.0.0.1:9464"', f'listen: "{metrics}"')
text = text[: text.index("\nmodel:\n")] + f"""
model:
  initial: {base}
{adapter_block}rounds:
  min_clients: 3
  max_clients: 3
  sampling_rate: 1.0
  interval: 1s
  max_rounds: {rounds}
  timeouts:
    train: 5m
  trainable: [experts, router]
  # DP-SGD's noise is σ·C per step whatever the batch, while the signal grows with it, so its
  # batches are larger than a plain run's (32 records, each all its 64-token windows). Tried
  # over five rounds: 10 steps of 64 records moved no domain's loss by more than 0.015 at any
  # learning rate from 0.002 to 0.1; 40 steps of 32 at 0.004 fell 0.008-0.013, at 0.01
  # 0.008-0.023.
  training:
    steps: 40
    batch_size: 32
    seq_len: 64
    learning_rate: 0.01
    min_learning_rate_ratio: 0.1
    record_noise_multiplier: {record_noise}
    record_clip_norm: 1.0
  server_optimizer:
    kind: fedavg
    learning_rate: 0.1
privacy:
  mode: distributed
  mechanism: discrete_gaussian
  # Per-site updates are clipped this far. DP-SGD's noise makes a site's change long (most of
  # its norm is noise, which the merge averages down): at 1.0 the clipping left too little
  # signal for any domain to improve by more than 0.001.
  clip_norm: 20.0
  # Client-level DP (one whole site's data) needs many sites per round: with three and ~230k
  # values per update, noise that kept this epsilon small would drown the signal, so it is
  # infinite here (once the RDP epsilon passes ~45 the noise samplers' finite precision, which
  # the ledger charges to delta, takes all of delta). What protects each site's records is
  # DP-SGD above, whose epsilon each site keeps in its own ledger.
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
  if ((adapters)); then
    sed -i "s|^  base: \"\"|  base: \"$initial\"|" "$work/$org/client.yaml"
    grep -q "^  base: \"$initial\"" "$work/$org/client.yaml" ||
      { echo "quickstart: cannot set $org's base" >&2; exit 1; }
  fi
  if [[ "$record_noise" != 0 ]]; then
    # Each site's own floor: no round below this σ, and a record-level budget of ε = 8.
    sed -i -e "s|min_record_noise_multiplier: 0|min_record_noise_multiplier: $record_noise|" \
      -e "s|max_record_epsilon: 0|max_record_epsilon: 8|" "$work/$org/client.yaml"
    grep -q "max_record_epsilon: 8" "$work/$org/client.yaml" ||
      { echo "quickstart: cannot set $org's privacy policy" >&2; exit 1; }
  fi
  # The personalization block as enrolled (4 private experts per layer trained after each
  # commit, Ditto's λ = 0.01), unless FEDMOE_PRIVATE_EXPERTS, FEDMOE_TRAIN_PRIVATE_EXPERTS
  # (after_commit, with_round) or FEDMOE_DITTO_LAMBDA say otherwise.
  sed -i -e "s|^  mode: none|  mode: $personal|" \
    -e "s|^  private_experts: .*|  private_experts: ${FEDMOE_PRIVATE_EXPERTS:-4}|" \
    -e "s|^  train_private_experts: .*|  train_private_experts: ${FEDMOE_TRAIN_PRIVATE_EXPERTS:-after_commit}|" \
    -e "s|^  ditto_lambda: .*|  ditto_lambda: ${FEDMOE_DITTO_LAMBDA:-0.01}|" "$work/$org/client.yaml"
  grep -q "^  mode: $personal" "$work/$org/client.yaml" ||
    { echo "quickstart: cannot set $org's personalization" >&2; exit 1; }
  grep -q "threads: $share" "$work/$org/client.yaml" ||
    { echo "quickstart: cannot set threads in $org's client.yaml" >&2; exit 1; }
  echo "    $org's metrics: http://$client_metrics/metrics; $share CPU thread(s)"
  "$bin/fedmoe-client" run --config "$work/$org/client.yaml" 2>"$work/$org.log" &
  pids+=($!)
done

if [[ "$record_noise" != 0 ]]; then
  say "running $rounds rounds (each: sync model, 40 DP-SGD steps of 32 records, clip, noise, mask, merge)"
else
  say "running $rounds rounds (each: sync model, 40 steps of 32 records, clip, noise, mask, merge)"
fi
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
say "fedmoe-client privacy report (${orgs[0]}): its own record-level ledger"
"$bin/fedmoe-client" privacy report --state-dir "$work/${orgs[0]}"
for org in "${orgs[@]}"; do
  "$bin/fedmoe-client" privacy report --json --state-dir "$work/$org" >"$work/$org-record-privacy.json"
done

say "held-out loss per domain, initial vs final global model"
final_version=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["model_version"])' \
  <<<"$("$bin/fedmoe-coordinator" status --state-dir "$state" --json)")
# A version is a model, or (--adapters) adapters over the INT8 base: model_args for `eval`.
version_args() {
  if ((adapters)); then
    model_args=(--model "$initial" --adapter "$state/models/v$1")
  else
    model_args=(--model "$state/models/v$1")
  fi
}
losses=()
for domain in "${domains[@]}"; do
  version_args 1
  before=$(json_field loss <<<"$("$bin/fedmoe-client" model eval "${model_args[@]}" \
    --data "$work/heldout-$domain.txt" --seq-len 64)")
  version_args "$final_version"
  after=$(json_field loss <<<"$("$bin/fedmoe-client" model eval "${model_args[@]}" \
    --data "$work/heldout-$domain.txt" --seq-len 64)")
  printf '    %-12s %.4f -> %.4f nats\n' "$domain" "$before" "$after"
  losses+=("$before" "$after")
done

# Each site's personal model, once its daemon has brought it to the final global version.
: >"$work/personal-losses"
if [[ "$personal" != none ]]; then
  say "each site's own held-out data: final global model vs its personal model ($personal)"
  for i in 0 1 2; do
    org=${orgs[$i]}
    domain=${domains[$i]}
    for _ in $(seq 1 600); do
      version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["global_version"])' \
        "$work/$org/personal/personal.json" 2>/dev/null || echo 0)
      ((version >= final_version)) && break
      sleep 0.2
    done
    ((version >= final_version)) ||
      { echo "quickstart: $org's personal model did not reach v$final_version" >&2; exit 1; }
    global_loss=$(json_field loss <<<"$("$bin/fedmoe-client" model eval \
      --model "$state/models/v$final_version" --data "$work/heldout-$domain.txt" --seq-len 64)")
    personal_loss=$(json_field loss <<<"$("$bin/fedmoe-client" model eval \
      --model "$work/$org/personal" --data "$work/heldout-$domain.txt" --seq-len 64)")
    printf '    %-14s %-12s global %.4f   personal %.4f nats\n' "$org" "$domain" \
      "$global_loss" "$personal_loss"
    echo "$domain $personal_loss" >>"$work/personal-losses"
  done
fi
if [[ -n "${FEDMOE_QUICKSTART_OUT:-}" ]]; then
  out=$FEDMOE_QUICKSTART_OUT
  mkdir -p "$out"
  cp -r "$work/base" "$out/base"
  cp -r "$state/models/v$final_version" "$out/global"
  cp -r "$work/data" "$out/data"
  cp "$work"/heldout-*.txt "$out/"
  for org in "${orgs[@]}"; do
    [[ -d "$work/$org/personal" ]] && cp -r "$work/$org/personal" "$out/personal-$org"
  done
  printf '%s\n' "${orgs[@]}" >"$out/orgs"
  printf '%s\n' "${domains[@]}" >"$out/domains"
fi

python3 - "$work/coordinator.log" "$rounds" "${losses[@]}" "$work" "$adapters" "${orgs[@]}" <<'PY'
import json, sys
log, rounds = sys.argv[1], int(sys.argv[2])
losses = [float(x) for x in sys.argv[3:9]]
work, adapters, orgs = sys.argv[9], sys.argv[10] == "1", sys.argv[11:]
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
import math
# Each site's record-level ε from its own ledger; None where a site ran no DP-SGD.
record = {}
for org in orgs:
    datasets = json.load(open(f"{work}/{org}-record-privacy.json"))["datasets"]
    record[org] = datasets[0]["epsilon"] if datasets else None
    if record[org] is None and datasets:
        record[org] = math.inf
def number(value):
    value = float(value)
    return value if math.isfinite(value) else None
print(f"\n==> federation-wide expert load (share of routing weight, last round; noised by DP)")
for part in last["expert_load"].split("; "):
    print(f"    {part}")
print(f"\n==> record-level privacy per site (DP-SGD, each site's own ledger)")
for org in orgs:
    datasets = json.load(open(f"{work}/{org}-record-privacy.json"))["datasets"]
    if not datasets:
        print(f"    {org}: no DP-SGD: one record's influence is unbounded (record-level epsilon infinite)")
        continue
    d = datasets[0]
    print(f"    {org}: epsilon {record[org]:.3g} at delta {d['delta']:.3g} over {d['steps']} steps "
          f"(q = {d['sampling_rate']:.3g}, sigma = {d['noise_multiplier']:.3g}, C = {d['clip_norm']:g}, "
          f"record: {d['unit']}, {d['records']} records)")
print(f"\n==> summary: {rounds} rounds, 3 clients, client-level epsilon {float(last['epsilon']):.4g} at delta {last['delta']:g}, "
      f"{bytes_per/1e6:.2f} MB sent per client per round")
before = sum(losses[0::2]) / 3
after = sum(losses[1::2]) / 3
finite = [e for e in record.values() if e is not None]
record_epsilon = number(max(finite)) if len(finite) == len(record) else None
personal = dict(line.split() for line in open(f"{work}/personal-losses") if line.strip())
personal_after = (round(sum(float(v) for v in personal.values()) / len(personal), 4)
                  if personal else None)
print(json.dumps({"rounds": rounds, "clients": 3, "adapters": adapters,
                  "loss_before": round(before, 4),
                  "loss_after": round(after, 4), "personal_loss_after": personal_after,
                  "personal_losses": {d: float(v) for d, v in personal.items()},
                  "losses": {d: [losses[2 * i], losses[2 * i + 1]] for i, d in enumerate(["finance", "it_support", "contracts"])},
                  "record_epsilon": record_epsilon, "epsilon": number(last["epsilon"]),
                  "delta": last["delta"], "bytes_per_client_round": round(bytes_per)}))
PY

if ((keep)); then
  say "federation running; Ctrl-C to stop (state in $work)"
  wait
fi
