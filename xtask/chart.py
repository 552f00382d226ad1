"""Lints, renders and validates Ambit's Helm chart (deploy/charts/ambit),
and writes the plain manifests rendered from it (deploy/ambit.yaml).

Helm itself comes as a library (helm-python-sdk, Helm 4); Kubernetes' own
OpenAPI schemas from kubernetes-validate. `cargo xtask chart` runs it;
`cargo xtask setup` installs both.

    python3 xtask/chart.py check    # every value set: lint, render, validate
    python3 xtask/chart.py render   # writes deploy/ambit.yaml (and -with-istio-crds)
    python3 xtask/chart.py render-json SET  # one value set's objects, as JSON

`check` prints one JSON report and exits non-zero when anything is wrong.
"""

import json
import pathlib
import sys

import helm_python
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "charts" / "ambit"
PLAIN = ROOT / "deploy" / "ambit.yaml"
PLAIN_WITH_CRDS = ROOT / "deploy" / "ambit-with-istio-crds.yaml"
CRDS = CHART / "crds" / "istio.yaml"
NAMESPACE = "ambit-system"
# The oldest and newest Kubernetes the chart supports.
KUBERNETES = ["1.25.0", "1.37.0"]

VALUE_SETS = {
    "default": {},
    "gke": {"platform": "gke"},
    "k3s": {"platform": "k3s"},
    "openshift": {"platform": "openshift"},
    # A canary release beside the stable one, on nodes of its own.
    "canary": {
        "revision": "canary",
        "nodeAgent": {"nodeSelector": {"ambit.dev/rev": "canary"}},
    },
    # Everything on: the gateway, a waypoint, the PodMonitor, a replicated CA.
    "full": {
        "createNamespace": True,
        "ingressGateway": {"enabled": True},
        "waypoints": [{"namespace": "shop", "name": "waypoint"}],
        "podMonitor": True,
        "ca": {"replicas": 2},
        "cni": {"exemptNamespaces": ["monitoring"]},
        "tracing": {"otlpEndpoint": "http://otel-collector.observability:4318", "sampling": 10},
    },
}

# Kinds no Kubernetes schema describes (the Prometheus operator's).
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}

# The order `kubectl apply -f` needs within one file: what others live in
# or refer to first.
APPLY_ORDER = [
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Secret",
    "ResourceQuota",
    "Service",
    "DaemonSet",
    "Deployment",
    "PodDisruptionBudget",
    "NetworkPolicy",
]


def render(values):
    """The chart's objects for `values`, in the order they apply."""
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(values, name="ambit", namespace=NAMESPACE, is_install=True)
    objects = []
    for path in sorted(rendered):
        for document in yaml.safe_load_all(rendered[path]):
            if document:
                objects.append(document)
    rank = {kind: i for i, kind in enumerate(APPLY_ORDER)}
    objects.sort(key=lambda o: rank.get(o["kind"], len(APPLY_ORDER)))
    return objects


def plain_manifests(with_crds=False):
    """deploy/ambit.yaml: the default values, the namespace created; with
    `with_crds`, Istio's kinds' CRDs first (for a cluster without Istio:
    applied beside Istio's own, they would replace them)."""
    objects = render({"createNamespace": True})
    header = (
        "# Ambit, rendered from deploy/charts/ambit with its default values\n"
        "# (`cargo xtask chart render`; do not edit): `kubectl apply -f` applies\n"
        "# it in one pass, the namespace first.\n"
    )
    if with_crds:
        objects = [d for d in yaml.safe_load_all(CRDS.read_text()) if d] + objects
        header = header.replace("the namespace first.", "the CRDs and the namespace first.") + (
            "# With the CRDs of Istio's kinds: for a cluster without Istio only.\n"
        )
    return header + yaml.safe_dump_all(objects, sort_keys=False)


def name(o):
    meta = o.get("metadata", {})
    return f"{o['kind']} {meta.get('namespace', '')}/{meta.get('name')}"


def apply_problems(objects):
    """What `kubectl apply` of `objects` in this order would refuse: an
    object in the release namespace before it is created, an Istio
    resource before its CRD, a namespaced object without a namespace."""
    problems = []
    namespaces = set()
    crds = set()
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for o in objects:
        kind = o["kind"]
        if kind == "Namespace":
            namespaces.add(o["metadata"]["name"])
        if kind == "CustomResourceDefinition":
            spec = o["spec"]
            crds.add((spec["group"], spec["names"]["kind"]))
        group = o["apiVersion"].split("/")[0] if "/" in o["apiVersion"] else ""
        if group.endswith("istio.io") and (group, kind) not in crds:
            problems.append(f"{name(o)}: applied before its CRD")
        if kind in cluster_scoped:
            continue
        namespace = o["metadata"].get("namespace")
        if namespace is None:
            problems.append(f"{name(o)}: no namespace")
        # Other namespaces (a waypoint's) are the user's own, there already.
        elif namespace == NAMESPACE and namespace not in namespaces:
            problems.append(f"{name(o)}: its namespace {namespace} is not created before it")
    return problems


# Istio's published samples (its Bookinfo tasks) and the suite's own.
SAMPLES = sorted((ROOT / "config" / "tests" / "fixtures").rglob("*.yaml"))


def structural_problems(schema, path):
    """Where `schema` breaks Kubernetes' structural schema rules."""
    problems = []
    if "$ref" in schema:
        problems.append(f"{path}: $ref")
    for key in ("oneOf", "anyOf", "allOf", "not"):
        if key in schema:
            problems.append(f"{path}: {key}")
    if "type" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: properties beside additionalProperties")
    for name, child in schema.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        problems += structural_problems(schema["items"], f"{path}[]")
    return problems


def as_json_schema(schema):
    """An OpenAPI v3 (Kubernetes) schema as JSON Schema: `nullable` lets
    null through; no field outside `properties` (Kubernetes would prune it:
    the object would not be what was written)."""
    if not isinstance(schema, dict):
        return schema
    converted = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    if "properties" in schema:
        converted["properties"] = {n: as_json_schema(c) for n, c in schema["properties"].items()}
        converted["additionalProperties"] = False
    elif isinstance(schema.get("additionalProperties"), dict):
        converted["additionalProperties"] = as_json_schema(schema["additionalProperties"])
    if "items" in schema:
        converted["items"] = as_json_schema(schema["items"])
    if schema.get("nullable") and "type" in converted:
        converted["type"] = [converted["type"], "null"]
    return converted


def crd_report():
    """The generated CRDs: valid CRD objects for both Kubernetes versions,
    structural, and Istio's samples valid under them."""
    import jsonschema

    problems = []
    crds = [d for d in yaml.safe_load_all(CRDS.read_text()) if d]
    schemas = {}
    for crd in crds:
        for version in KUBERNETES:
            try:
                kubernetes_validate.validate(crd, version, strict=True)
            except Exception as error:  # noqa: BLE001: every reason is reported
                problems.append(f"{version}: {name(crd)}: {getattr(error, 'message', error)}")
        spec = crd["spec"]
        for served in spec["versions"]:
            schema = served["schema"]["openAPIV3Schema"]
            problems += structural_problems(schema, f"{crd['metadata']['name']} {served['name']}")
            schemas[(f"{spec['group']}/{served['name']}", spec["names"]["kind"])] = schema
    samples = 0
    for path in SAMPLES:
        for document in yaml.safe_load_all(path.read_text()):
            if not document or not str(document.get("apiVersion", "")).split("/")[0].endswith("istio.io"):
                continue
            schema = schemas.get((document["apiVersion"], document["kind"]))
            where = f"{path.relative_to(ROOT)}: {document['kind']} {document['metadata']['name']}"
            if schema is None:
                problems.append(f"{where}: no CRD serves {document['apiVersion']}")
                continue
            samples += 1
            body = {"spec": document.get("spec", {})}
            for error in jsonschema.Draft4Validator(as_json_schema(schema)).iter_errors(body):
                problems.append(f"{where}: {'.'.join(map(str, error.path))}: {error.message}")
    return {"crds": len(crds), "samplesValidated": samples, "problems": problems}


def check():
    report = {"valueSets": {}, "problems": []}
    report["crds"] = crd_report()
    report["problems"] += [f"crds: {p}" for p in report["crds"]["problems"]]
    for value_set, values in VALUE_SETS.items():
        lint = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
        errors = [m["error"] for m in lint["messages"] if m["severity"] >= 2] + lint["errors"]
        objects = render(values)
        invalid = []
        for version in KUBERNETES:
            for o in objects:
                if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS:
                    continue
                try:
                    kubernetes_validate.validate(o, version, strict=True)
                except Exception as error:  # noqa: BLE001: every reason is reported
                    message = getattr(error, "message", str(error))
                    invalid.append(f"{version}: {name(o)}: {message}")
        order = apply_problems(objects) if values.get("createNamespace") else []
        report["valueSets"][value_set] = {
            "objects": len(objects),
            "kinds": sorted({o["kind"] for o in objects}),
            "lint": errors,
            "invalid": invalid,
            "order": order,
        }
        for problem in errors + invalid + order:
            report["problems"].append(f"{value_set}: {problem}")
    # A revision installs beside the stable release: no object of one may
    # be the other's.
    def names(values):
        return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in render(values)}

    shared = sorted(" ".join(n) for n in names({}) & names(VALUE_SETS["canary"]))
    report["revisionShares"] = shared
    report["problems"] += [f"canary and default releases both render {n}" for n in shared]
    report["plainOrder"] = []
    for path, with_crds in ((PLAIN, False), (PLAIN_WITH_CRDS, True)):
        plain = plain_manifests(with_crds)
        shown = path.relative_to(ROOT)
        if not path.exists() or path.read_text() != plain:
            report["problems"].append(
                f"{shown} is not what the chart renders: run `cargo xtask chart render`"
            )
        order = apply_problems([d for d in yaml.safe_load_all(plain) if d])
        report["plainOrder"] += [f"{shown}: {p}" for p in order]
    report["problems"] += report["plainOrder"]
    print(json.dumps(report, indent=2))
    return 1 if report["problems"] else 0


def main(argv):
    if argv[1:] == ["check"]:
        return check()
    if len(argv) == 3 and argv[1] == "render-json" and argv[2] in VALUE_SETS:
        print(json.dumps(render(VALUE_SETS[argv[2]])))
        return 0
    if argv[1:] == ["render"]:
        for path, with_crds in ((PLAIN, False), (PLAIN_WITH_CRDS, True)):
            path.write_text(plain_manifests(with_crds))
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
