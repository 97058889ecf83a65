#!/usr/bin/env bash
# Does joining pay for each site? Runs the quickstart's federation (deploy/quickstart.sh: three
# sites, each holding one domain) and, per site, compares the held-out loss on its own domain
# and the mean over the other two for:
#   (a) base      the model the federation starts from
#   (b) global    the federation's final global model
#   (c) alone     the base fine-tuned on the site's data alone, for as many local steps as the
#                 site took in the federation (rounds × 40), with the same batch, sequence
#                 length, learning rate and trainable tensors, and no DP-SGD (a site training
#                 alone releases nothing)
#   (c') alone_constant  the same, at a constant learning rate after the warmup: the schedule of
#                 the personal model's passes, so that neither side has the better schedule
#   (d) personal  the site's personal model (private experts or Ditto)
# Prints the table, then one JSON line.
#
#   bench/personalization.sh [QUICKSTART_FLAGS]   e.g. --no-dp-sgd, --personal=ditto
#   FEDMOE_ROUNDS=N                               N rounds (default 5)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-}" in
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
rounds=${FEDMOE_ROUNDS:-5}
out=$(mktemp -d -t fedmoe-personalization-XXXXXX)
trap 'rm -rf "$out"' EXIT

FEDMOE_QUICKSTART_OUT=$out FEDMOE_ROUNDS=$rounds "$root/deploy/quickstart.sh" "$@" \
  >"$out/quickstart.log" 2>&1 || { tail -20 "$out/quickstart.log" >&2; exit 1; }
bin=$root/build/bin
mapfile -t orgs <"$out/orgs"
mapfile -t domains <"$out/domains"

# The site alone: the federation's local training settings, run for all its rounds' steps, with
# their cosine schedule and with a constant rate.
printf 'schedule: constant\n' >"$out/constant.yaml"
for domain in "${domains[@]}"; do
  "$bin/fedmoe-client" train --model "$out/base" --data "$out/data/$domain" \
    --out "$out/alone-$domain" --steps $((rounds * 40)) --batch-size 32 --seq-len 64 --lr 0.01 \
    --log-every 100000 >"$out/alone-$domain.log"
  "$bin/fedmoe-client" train --model "$out/base" --data "$out/data/$domain" \
    --out "$out/alone_constant-$domain" --steps $((rounds * 40)) --batch-size 32 --seq-len 64 \
    --lr 0.01 --config "$out/constant.yaml" --log-every 100000 >"$out/alone_constant-$domain.log"
done

loss() {
  "$bin/fedmoe-client" model eval --model "$1" --data "$out/heldout-$2.txt" --seq-len 64 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["loss"])'
}
: >"$out/losses"
for i in "${!orgs[@]}"; do
  org=${orgs[$i]}
  declare -A models=([base]="$out/base" [global]="$out/global" [alone]="$out/alone-${domains[$i]}"
    [alone_constant]="$out/alone_constant-${domains[$i]}")
  [[ -d "$out/personal-$org" ]] && models[personal]="$out/personal-$org"
  for kind in "${!models[@]}"; do
    for domain in "${domains[@]}"; do
      echo "$org ${domains[$i]} $kind $domain $(loss "${models[$kind]}" "$domain")" >>"$out/losses"
    done
  done
  unset models
done

python3 - "$out/losses" "$out/quickstart.log" "$rounds" "$*" <<'PY'
import collections, json, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
quickstart = open(sys.argv[2]).read()
table = collections.defaultdict(dict)
for org, own, kind, domain, value in rows:
    table[(org, own)].setdefault(kind, {})[domain] = float(value)
kinds = [k for k in ("base", "global", "alone", "alone_constant", "personal")
         if any(k in v for v in table.values())]
print(f"held-out loss (nats per token), {sys.argv[3]} rounds; own domain / mean of the others")
print(f"{'site':16s} {'domain':12s} " + " ".join(f"{k:>17s}" for k in kinds))
sites = {}
for (org, own), by_kind in table.items():
    cells, site = [], {"domain": own}
    for kind in kinds:
        losses = by_kind.get(kind, {})
        others = [v for d, v in losses.items() if d != own]
        own_loss, other_loss = losses.get(own), sum(others) / len(others) if others else None
        site[kind] = {"own": own_loss, "others": other_loss}
        cells.append(f"{own_loss:8.4f} /{other_loss:7.4f}" if own_loss is not None else " " * 17)
    sites[org] = site
    print(f"{org:16s} {own:12s} " + " ".join(cells))
result = {"rounds": int(sys.argv[3]), "sites": sites,
          "dp_sgd": "--no-dp-sgd" not in sys.argv[4]}
if "personal" in kinds:
    result["personal_own_minus_alone_own"] = {
        o: round(s["personal"]["own"] - s["alone"]["own"], 4) for o, s in sites.items()}
    result["personal_others_minus_alone_others"] = {
        o: round(s["personal"]["others"] - s["alone"]["others"], 4) for o, s in sites.items()}
    result["personal_own_minus_alone_constant_own"] = {
        o: round(s["personal"]["own"] - s["alone_constant"]["own"], 4) for o, s in sites.items()}
for line in quickstart.splitlines()[::-1]:
    if line.startswith("{"):
        result["quickstart"] = json.loads(line)
        break
print(json.dumps(result))
PY
