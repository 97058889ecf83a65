#!/usr/bin/env python3
"""The coordinator's rooms depend on each other only downward (docs/architecture.md, "The
coordinator's rooms"): state/ on nothing else in coordinator/, identity/ on state/, round/ on
state/ and identity/, service/ and cli/ on any. config.h and core.h sit on top; every room may
read config.h, and only service/ and cli/ open core.h. And client/ includes nothing from kernels/
(DESIGN §1). Prints each include that breaks this.

    tests/lint/check_rooms.py SOURCE_DIR
"""
import pathlib
import re
import sys

ALLOWED = {
    "state": {"state", "config.h"},
    "identity": {"identity", "state", "config.h"},
    "round": {"round", "identity", "state", "config.h"},
    "service": {"service", "round", "identity", "state", "config.h", "core.h"},
    "cli": {"cli", "service", "round", "identity", "state", "config.h", "core.h"},
}
INCLUDE = re.compile(r'^#include "coordinator/([^"/]+)(/[^"]*)?"', re.MULTILINE)

root = pathlib.Path(sys.argv[1]) / "coordinator"
violations = 0
for room, allowed in ALLOWED.items():
    for path in sorted((root / room).glob("*.*")):
        for match in INCLUDE.finditer(path.read_text()):
            target = match.group(1)
            if target not in allowed:
                print(f"{path.relative_to(root.parent)}: includes coordinator/{target}"
                      f"{match.group(2) or ''}, which {room}/ may not use")
                violations += 1
# The client reaches the kernels only through model/ (model/compute.h for device and threads).
for path in sorted((root.parent / "client").glob("*.*")):
    for line in path.read_text().splitlines():
        if line.startswith('#include "kernels/'):
            print(f"client/{path.name}: {line[len('#include '):]}; the client reaches the kernels "
                  "through model/")
            violations += 1
rooms = {p.name for p in root.iterdir() if p.is_dir()}
if rooms != set(ALLOWED):
    print(f"coordinator/ has rooms {sorted(rooms)}; this check knows {sorted(ALLOWED)}")
    violations += 1
print(f"{violations} include(s) against the rooms' order")
sys.exit(1 if violations else 0)
