#!/usr/bin/env python3
"""Renders deploy/helm/fedmoe-coordinator and checks the Kubernetes objects it makes.

With `helm` on PATH this uses `helm template`. Debian has no helm, but it has Go, whose
text/template is the engine Helm renders with: tests/deploy/helm_render.go runs the chart
through it (with Sprig's `quote`, the one Sprig function the chart uses). The test also
renders with its own interpreter of the small part of the template language that the chart
restricts itself to, and fails unless both give the same objects:
  - values and release fields (.Values.a.b, .Release.Name, .Release.Namespace,
    .Chart.AppVersion);
  - `| quote`;
  - if / if not / else / end;
  - `{{-` and `-}}` whitespace trimming.
Anything else in a template fails the test, so the chart cannot drift out of what is checked.
Without Go the subset alone renders; the last line of output names the renderer that ran.
Every document must parse as YAML. The objects are checked for each CA option (new CA,
existing Secret, Secret from values) and for a storage class.
    tests/deploy/helm_render_test.py SOURCE_DIR
"""
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

CHART = pathlib.Path(sys.argv[1]) / "deploy/helm/fedmoe-coordinator"
GO_RENDERER = pathlib.Path(sys.argv[1]) / "tests/deploy/helm_render.go"
RELEASE, NAMESPACE = "fed", "federation"
ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def merge(base, override):
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def lookup(path, context):
    if not path.startswith("."):
        raise ValueError(f"unsupported template expression: {path}")
    value = context
    for part in path[1:].split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"no value {path}")
        value = value[part]
    return value


def evaluate(expression, context):
    parts = [part.strip() for part in expression.split("|")]
    value = lookup(parts[0], context)
    for function in parts[1:]:
        if function != "quote":
            raise ValueError(f"unsupported template function: {function}")
        value = json.dumps("" if value is None else str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def render(text, context):
    # Split into text and actions, applying {{- and -}} trimming as Go templates do.
    pieces, position = [], 0
    for match in ACTION.finditer(text):
        chunk = text[position:match.start()]
        if match.group(1):
            chunk = chunk.rstrip(" \t\r\n")
        if pieces and pieces[-1][0] == "trim-next":
            pieces.pop()
            chunk = chunk.lstrip(" \t\r\n")
        pieces.append(("text", chunk))
        pieces.append(("action", match.group(2)))
        if match.group(3):
            pieces.append(("trim-next", None))
        position = match.end()
    tail = text[position:]
    if pieces and pieces[-1][0] == "trim-next":
        pieces.pop()
        tail = tail.lstrip(" \t\r\n")
    pieces.append(("text", tail))

    out, stack = [], []  # stack of (emitting_before, condition_taken)
    emitting = True
    for kind, value in pieces:
        if kind == "text":
            if emitting:
                out.append(value)
            continue
        words = value.split()
        if words[0] == "if":
            negate = len(words) == 3 and words[1] == "not"
            if len(words) != (3 if negate else 2):
                raise ValueError(f"unsupported condition: {value}")
            taken = bool(lookup(words[-1], context)) != negate
            stack.append((emitting, taken))
            emitting = emitting and taken
        elif value == "else":
            outer, taken = stack[-1]
            emitting = outer and not taken
        elif value == "end":
            emitting, _ = stack.pop()
        elif not words[0].startswith("."):
            raise ValueError(f"unsupported template action: {value}")
        elif emitting:
            out.append(evaluate(value, context))
    if stack:
        raise ValueError("an if without its end")
    return "".join(out)


GO_BUILD = tempfile.TemporaryDirectory()
go_renderer = None


def render_with_go(context):
    """The chart rendered by Go's text/template, or None without Go."""
    global go_renderer
    go = shutil.which("go")
    if not go:
        return None
    if go_renderer is None:
        binary = pathlib.Path(GO_BUILD.name) / "helm_render"
        environment = {"PATH": "/usr/bin:/bin", "HOME": GO_BUILD.name, "GOCACHE": f"{GO_BUILD.name}/cache",
                       "GOPATH": f"{GO_BUILD.name}/path", "GO111MODULE": "off", "GOFLAGS": "", "CGO_ENABLED": "0"}
        subprocess.run([go, "build", "-o", str(binary), str(GO_RENDERER)], check=True, env=environment)
        go_renderer = binary
    return subprocess.run([str(go_renderer), str(CHART)], input=json.dumps(context), check=True,
                          capture_output=True, text=True).stdout


def parse(text):
    found = {}
    for document in yaml.safe_load_all(text):
        if document:
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def objects(overrides):
    """All rendered objects, by (kind, name)."""
    helm = shutil.which("helm")
    if helm:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
            yaml.safe_dump(overrides, values)
            values.flush()
            text = subprocess.run(
                [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", values.name],
                check=True, capture_output=True, text=True).stdout
    else:
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        context = {
            "Values": merge(yaml.safe_load((CHART / "values.yaml").read_text()), overrides),
            "Release": {"Name": RELEASE, "Namespace": NAMESPACE},
            "Chart": {"Name": chart["name"], "AppVersion": chart["appVersion"], "Version": chart["version"]},
        }
        text = "\n---\n".join(render(path.read_text(), context)
                              for path in sorted((CHART / "templates").glob("*.yaml")))
        go_text = render_with_go(context)
        if go_text is not None:
            expect(parse(go_text) == parse(text),
                   f"Go's text/template and the subset interpreter disagree for values {overrides}")
            text = go_text
    return parse(text)


failures = []


def expect(condition, what):
    if not condition:
        failures.append(what)


# Defaults: a new CA made by init on the volume.
default = objects({})
expect(set(default) == {("StatefulSet", RELEASE), ("Service", RELEASE), ("Service", f"{RELEASE}-metrics")},
       f"default objects: {sorted(default)}")
statefulset = default[("StatefulSet", RELEASE)]
pod = statefulset["spec"]["template"]["spec"]
container = pod["containers"][0]
expect(pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001,
       "the pod runs as the non-root user 10001")
expect(container["args"] == ["serve", "--config", "/var/lib/fedmoe-coordinator/coordinator.yaml"],
       f"serve args: {container['args']}")
expect({port["name"]: port["containerPort"] for port in container["ports"]}
       == {"mtls": 7443, "enroll": 7444, "metrics": 9464}, "container ports")
expect(container["livenessProbe"]["exec"]["command"][:2] == ["fedmoe-coordinator", "status"],
       "the liveness probe checks the admin gRPC service")
expect(container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"},
       f"the readiness probe asks /health: {container['readinessProbe']}")
claim = statefulset["spec"]["volumeClaimTemplates"][0]
expect(claim["metadata"]["name"] == "state" and claim["spec"]["resources"]["requests"]["storage"] == "20Gi",
       "a 20Gi state volume per replica")
expect("storageClassName" not in claim["spec"], "no storage class unless one is given")
ca_volume = next(volume for volume in pod["volumes"] if volume["name"] == "ca")
expect(ca_volume["secret"] == {"secretName": f"{RELEASE}-ca", "optional": True, "defaultMode": 0o440},
       f"optional CA secret: {ca_volume}")
script = pod["initContainers"][0]["args"][0]
expect(f'--san "{RELEASE}.{NAMESPACE}.svc"' in script and '--federation "acme"' in script,
       "init names the Service and the federation")
service = default[("Service", RELEASE)]
expect({port["name"]: port["port"] for port in service["spec"]["ports"]} == {"mtls": 7443, "enroll": 7444},
       "the client Service exposes the mTLS and enrollment ports")

expect("externalTrafficPolicy" not in service["spec"], "no traffic policy on a ClusterIP Service")
exposed = objects({"service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"}})[
    ("Service", RELEASE)]
expect(exposed["spec"]["externalTrafficPolicy"] == "Local",
       "a LoadBalancer keeps the clients' addresses for the per-peer limits")

# An existing CA Secret.
existing = objects({"ca": {"existingSecret": "acme-ca"}})
volumes = existing[("StatefulSet", RELEASE)]["spec"]["template"]["spec"]["volumes"]
expect(next(v for v in volumes if v["name"] == "ca")["secret"]["secretName"] == "acme-ca",
       "the existing Secret is mounted")
expect(("Secret", f"{RELEASE}-ca") not in existing, "no Secret is made for an existing one")

# A CA from values, with multi-line PEM texts, and a storage class.
pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
key = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n"
from_values = objects({"ca": {"certificate": pem, "key": key}, "persistence": {"storageClass": "fast"}})
secret = from_values.get(("Secret", f"{RELEASE}-ca"))
expect(secret is not None and secret["stringData"] == {"ca.pem": pem, "ca.key": key},
       "the CA Secret holds the PEM texts exactly")
claim = from_values[("StatefulSet", RELEASE)]["spec"]["volumeClaimTemplates"][0]
expect(claim["spec"].get("storageClassName") == "fast", "the storage class is used")

for failure in failures:
    print("FAIL:", failure)
if shutil.which("helm"):
    renderer = "helm template"
elif shutil.which("go"):
    renderer = "Go's text/template (tests/deploy/helm_render.go), compared with the template subset"
else:
    renderer = "the template subset only (no helm, no go: install golang-go to render with Go)"
print(f"rendered with {renderer}; {len(failures)} failures")
sys.exit(1 if failures else 0)
