"""Mutated manifests through the real file source, store, admission and
translator, judged against the real Envoy (issue 10: the manifest corpus and
the fuzz harness share this).

`base_files()` is examples/canary plus a client Pod, a CNP with HTTP rules
and a CEC using the features users reach for. `mutate()` changes one
document in one of the ways that broke nodemesh before: generic (a key
dropped, a value of the wrong type) and targeted (regexes RE2 refuses,
weights, domains, durations, header names, body sizes, kinds, names,
addresses). `run_case()` loads the files, builds and translates, and says
what happened; `envoy_accepts()` asks a real Envoy about a translation.
"""

from __future__ import annotations

import copy
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodemesh.model.objects import ObjectRef
from nodemesh.model.parse import object_ref
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource
from nodemesh.xds.translate import LISTENER, Translation, Translator
from nodemesh.xds.translate import validate_envoy_config as validate
from tests.xds.translate.envoy_static import envoy_validate, static_bootstrap, write_bootstrap

ROOT = Path(__file__).resolve().parents[2]
CANARY = ROOT / "examples" / "canary"
T = "type.googleapis.com/"
SERVING = "default/httpbin-traffic-split/listener"
SERVING_OBJECTS = ("httpbin", "httpbin-traffic-split")  # the Service and the CEC

EXTRA = f"""
apiVersion: v1
kind: Pod
metadata: {{name: curl, namespace: default, labels: {{app: curl}}}}
spec: {{nodeName: n1}}
status: {{phase: Running, podIPs: [{{ip: 10.0.0.5}}]}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: rules, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: curl}}}}
  egress:
  - toServices: [{{k8sService: {{serviceName: httpbin-v1, namespace: default}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
      rules:
        http:
        - {{method: GET, path: "/status/.*", headers: ["X-Probe", "X-Env: prod"]}}
        - {{method: "GET|HEAD", headerMatches: [{{name: X-Id, value: "1"}}]}}
---
apiVersion: cilium.io/v2
kind: CiliumEnvoyConfig
metadata: {{name: features, namespace: default}}
spec:
  services: [{{name: httpbin-v2, namespace: default}}]
  resources:
  - "@type": {T}envoy.config.route.v3.RouteConfiguration
    name: features
    virtual_hosts:
    - name: api
      domains: [api, api.default.svc.cluster.local]
      retry_policy: {{retry_on: "5xx,reset", num_retries: 2}}
      routes:
      - match: {{safe_regex: {{regex: "/v[0-9]+/items/.*"}}}}
        route:
          cluster: default/httpbin-v1
          regex_rewrite: {{pattern: {{regex: "^/v[0-9]+"}}, substitution: ""}}
          timeout: 2s
      - match:
          prefix: /
          headers: [{{name: x-canary, string_match: {{exact: "yes"}}}}]
        route: {{cluster: default/httpbin-v2, prefix_rewrite: /}}
        request_headers_to_add: [{{header: {{key: x-routed-by, value: nodemesh}}}}]
      - match: {{prefix: /health}}
        direct_response: {{status: 200, body: {{inline_string: ok}}}}
      - match: {{prefix: /}}
        route:
          weighted_clusters:
            clusters:
            - {{name: default/httpbin-v1, weight: 90}}
            - {{name: default/httpbin-v2, weight: 10}}
  - "@type": {T}envoy.config.cluster.v3.Cluster
    name: default/httpbin-v1
    type: EDS
    connect_timeout: 1s
    lb_policy: LEAST_REQUEST
"""

ODD: list[Any] = [None, 0, -1, 70000, True, "", "x", [], [1], {}, {"a": 1}, 1.5]
NASTY_REGEXES = [
    "\\Z",
    "a\\Z",
    "(?#c)a",
    "a++",
    "(?>a)",
    "(?x)a",
    "a{1001}",
    "a{100}",
    "(?<=a)b",
    "(a)\\1",
    "[",
    "a{2,1}",
    "(?P<n>a)(?P=n)",
    "[a-z]" * 30,
    "\\pL+",
    ".*",
]
TARGETED: dict[str, list[Any]] = {
    "regex": NASTY_REGEXES,
    "path": NASTY_REGEXES,
    "method": NASTY_REGEXES,
    "weight": [None, 0, -1, 2**32, 2**32 - 1, 1.5, "10"],
    "domains": [["*", "*"], ["a", "a"], ["A", "a"], ["a\r\nb"], [], ["a\x00"], ["*.x", "*.X"]],
    "timeout": ["-1s", "9223372036s", "9223372035s", "0s", "abc", "1.5s", "-0.1s"],
    "connect_timeout": ["-1s", "0s", "9223372036s", "1ms"],
    "key": ["host", "Host", ":path", "", "a\nb", "a b", "x-ok"],
    "inline_string": ["x" * 4097, "x" * 4096, ""],
    "name": ["", "a\x00b", "a\r\nb", "UPPER", "x" * 300],
    "headers": [[""], ["a\x00b"], ["a\r\nb: v"], ["X-A: b"]],
    "kind": ["CiliumEnvoyConfg", "Servic", "ConfigMap", "ciliumenvoyconfig", None],
    "apiVersion": ["cilium.io/v1", "v2", "cilium.io/v2beta1", "apps/v2", None],
    "addresses": [["0.0.0.0"], ["255.255.255.255"], ["224.0.0.1"], ["::"], ["ff02::1"]],
    "protocol": ["SCTP", "UDP", "HTTP"],
    "port": [0, 70000, "80", -1],
    "num_retries": [-1, 2**32, None],
    "status": [0, 99, 600, 1000],
    "lb_policy": ["NOPE", 99, "MAGLEV"],
}


def base_files() -> dict[str, list[dict[str, Any]]]:
    files = {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(CANARY.glob("*.yaml"))}
    files["extra.yaml"] = list(yaml.safe_load_all(EXTRA))
    return {name: [d for d in docs if d is not None] for name, docs in files.items()}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _set(doc: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> None:
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(value)


def mutate(files: dict[str, list[dict[str, Any]]], rng: random.Random) -> tuple[str, str]:
    """Change one document of `files` in place; returns (file name, what)."""
    name = rng.choice(sorted(files))
    docs = files[name]
    index = rng.randrange(len(docs))
    doc = docs[index]
    paths = _paths(doc)
    targeted = [p for p in paths if p and isinstance(p[-1], str) and p[-1] in TARGETED]
    if targeted and rng.random() < 0.75:
        path = rng.choice(targeted)
        value = rng.choice(TARGETED[path[-1]])
        _set(doc, path, value, delete=value is None and rng.random() < 0.5)
    else:
        path = rng.choice(paths)
        value = rng.choice(ODD)
        _set(doc, path, value, delete=rng.random() < 0.3)
    return name, f"{name} doc {index + 1}: {'.'.join(map(str, path))} = {value!r:.60}"


@dataclass
class Outcome:
    what: str
    model: MeshModel
    translation: Translation
    problems: list[str]  # the file source's lines in status
    unnamed: list[str] = field(default_factory=list)  # rejections without object/field/reason
    dropped: list[str] = field(default_factory=list)  # documents gone without a word
    outage: bool = False  # the serving listener went away though nothing was deleted


def _refs(model: MeshModel) -> set[ObjectRef]:
    objects: list[Any] = [
        *model.services.values(),
        *model.endpoint_slices,
        *model.pods,
        *model.deployments,
        *model.envoy_configs,
        *model.network_policies,
    ]
    return {o.ref for o in objects}


def _write(directory: Path, files: dict[str, list[dict[str, Any]]]) -> None:
    for old in directory.glob("*.yaml"):
        old.unlink()
    for name, docs in files.items():
        try:
            text = yaml.safe_dump_all(docs, allow_unicode=True)
        except yaml.YAMLError:
            text = "kind: [broken\n"
        (directory / name).write_text(text)


def run_case(files: dict[str, list[dict[str, Any]]], what: str = "") -> Outcome:
    """The canary as served, then the user's edit (`files`) applied: what
    the edit left in effect and what status said about it."""
    with tempfile.TemporaryDirectory(prefix="manifest-fuzz-") as tmp:
        directory = Path(tmp)
        _write(directory, base_files())
        store = MeshStore(validators=[validate])
        source = FileSource(directory, store)
        source.load()
        translator = Translator()
        baseline = store.build()
        translator.translate(baseline)
        _write(directory, files)
        source.load()
        model = store.build()
        translation = translator.translate(model)
        status = source.problems()
    outcome = Outcome(what, model, translation, status)
    errors = (*model.errors, *translation.errors)
    for error in errors:
        if not (error.field and error.reason):
            outcome.unnamed.append(str(error))
    present = _refs(model)
    reported = {e.ref for e in errors}
    for name, docs in files.items():
        for index, doc in enumerate(docs):
            try:
                ref: ObjectRef | None = object_ref(doc)
            except Exception:
                ref = None
            if ref is not None and (ref in present or ref in reported):
                continue
            if any(name in line for line in status):
                continue
            outcome.dropped.append(f"{name} doc {index + 1} ({ref or 'unidentified'})")
    # Serving may go only through an accepted change to what serves (the user
    # changed or renamed the Service or the CEC); never through a refused one.
    lost = SERVING not in translation.resources[LISTENER]
    outcome.outage = lost and not _deliberate(baseline, model, errors, status)
    return outcome


def _serving_objects(model: MeshModel) -> dict[ObjectRef, Any]:
    objects: list[Any] = [*model.services.values(), *model.envoy_configs]
    return {o.ref: o for o in objects if o.ref.name in SERVING_OBJECTS}


def _deliberate(
    baseline: MeshModel, model: MeshModel, errors: tuple[Any, ...], status: list[str]
) -> bool:
    """Whether an accepted edit changed or removed what served the canary."""
    before, after = _serving_objects(baseline), _serving_objects(model)
    for ref, obj in before.items():
        now = after.get(ref)
        if now is not None and now != obj:
            return True  # accepted in a changed form
        if now is None and not any(e.ref == ref for e in errors) and not status:
            return True  # renamed or removed, and nothing was refused
    return False


def envoy_accepts(translation: Translation, path: Path) -> tuple[bool, str]:
    write_bootstrap(static_bootstrap(translation), path)
    result = envoy_validate(path)
    said = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode == 0, (said[-1] if said else "")[-400:]
