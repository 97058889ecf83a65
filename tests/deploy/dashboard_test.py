#!/usr/bin/env python3
"""The Grafana dashboard and the runbook name only metrics the programs export.

Every fedmoe_* metric that deploy/grafana/fedmoe.json queries must be registered in
coordinator/service/metrics.cc or client/client_metrics.cc and explained in docs/operations.md, and every
exported metric must be explained there too.
    tests/deploy/dashboard_test.py SOURCE_DIR
"""
import json
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
dashboard = json.loads((root / "deploy/grafana/fedmoe.json").read_text())
runbook = (root / "docs/operations.md").read_text()
sources = (root / "coordinator/service/metrics.cc").read_text() + (root / "client/client_metrics.cc").read_text()

exported = set(re.findall(r'"(fedmoe_[a-z_]+)"', sources))
queried = set()
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        for name in re.findall(r"fedmoe_[a-z_]+", target["expr"]):
            queried.add(re.sub(r"_(bucket|sum|count)$", "", name))

problems = []
for name in sorted(queried - exported):
    problems.append(f"the dashboard queries {name}, which nothing exports")
for name in sorted(exported):
    if f"`{name}" not in runbook:
        problems.append(f"docs/operations.md does not explain {name}")
if not exported:
    problems.append("found no exported metrics in the sources")
for problem in problems:
    print(problem)
print(f"{len(exported)} metrics exported, {len(queried)} on the dashboard")
sys.exit(1 if problems else 0)
