#!/usr/bin/env bash
# bench/personalization.sh at small size (one round, no DP-SGD, the quickstart's three sites):
# the table holds the base, global, alone and personal models for every site, and every site's
# personal model is below the global one on its own held-out domain, which is what makes
# joining pay.
set -euo pipefail
root=$1
output=$(FEDMOE_ROUNDS=1 "$root/bench/personalization.sh" --no-dp-sgd)
printf '%s\n' "$output"
python3 - "$(tail -1 <<<"$output")" <<'PY'
import json, math, sys
result = json.loads(sys.argv[1])
sites = result["sites"]
assert len(sites) == 3, sites
for name, site in sites.items():
    for kind in ("base", "global", "alone", "personal"):
        for part in ("own", "others"):
            value = site[kind][part]
            assert value is not None and math.isfinite(value), (name, kind, part, value)
    assert site["personal"]["own"] < site["global"]["own"], (name, site)
print("personalization: every site's personal model beats the global one on its own domain")
PY
