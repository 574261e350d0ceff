"""docker-compose.yml against the code: settings, routes, ports, mounts, Prometheus, Grafana."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml
from deploy_support import (
    REPO,
    URL_PATHS,
    container_port,
    duration_s,
    interpolate,
)

from artifact.testing import free_port
from service.settings import Settings

PREFIX = Settings.model_config["env_prefix"]
TAGGERS = ("tagger", "tagger-gpu")


def service(compose: dict, name: str) -> dict:
    return interpolate(compose["services"][name])


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def settings_of(svc: dict, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the container would build from its environment (validated)."""
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env_of(svc).items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_services_and_gpu_profile(compose):
    assert set(compose["services"]) == {"tagger", "tagger-gpu", "prometheus", "grafana"}
    tagger, gpu = compose["services"]["tagger"], compose["services"]["tagger-gpu"]
    assert "profiles" not in tagger, "the CPU tagger must start without a profile"
    assert gpu["profiles"] == ["gpu"]
    assert tagger["build"]["dockerfile"] == "docker/Dockerfile"
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    for svc in (tagger, gpu):
        assert (REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert env_of(gpu)["ML2P_ENGINE"] == "onnxruntime-gpu"


@pytest.mark.parametrize("name", TAGGERS)
def test_environment_names_are_settings_and_valid(compose, name, monkeypatch):
    env = env_of(service(compose, name))
    fields = set(Settings.model_fields)
    unknown = [k for k in env if k.startswith(PREFIX) and k[len(PREFIX):].lower() not in fields]
    assert not unknown, f"{name}: not settings fields: {unknown}"
    settings = settings_of(service(compose, name), monkeypatch)  # raises when a value is bad
    assert settings.host == "0.0.0.0", "inside a container the servers must bind all addresses"


@pytest.mark.parametrize("name", TAGGERS)
def test_ports_match_settings(compose, name, monkeypatch):
    svc = service(compose, name)
    settings = settings_of(svc, monkeypatch)
    defaults = Settings.model_fields
    assert (settings.http_port, settings.grpc_port) == (defaults["http_port"].default,
                                                        defaults["grpc_port"].default)
    assert {container_port(p) for p in svc["ports"]} == {settings.http_port, settings.grpc_port}


@pytest.mark.parametrize("name", TAGGERS)
def test_healthcheck_is_a_ready_route_and_works(compose, name, live, tmp_path):
    test = service(compose, name)["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", test
    paths = URL_PATHS.findall(" ".join(test))
    assert paths == ["/readyz"] and "/readyz" in live.routes
    run = [sys.executable, *test[2:]]
    ok = subprocess.run(run, env={"ML2P_HTTP_PORT": str(live.server.http_port)}, timeout=30)
    assert ok.returncode == 0, "the healthcheck fails against a ready server"
    down = subprocess.run(run, env={"ML2P_HTTP_PORT": str(free_port())}, timeout=30,
                          capture_output=True)
    assert down.returncode != 0, "the healthcheck passes with no server"


@pytest.mark.parametrize("name", TAGGERS)
def test_stop_grace_covers_the_drain(compose, name, monkeypatch):
    svc = service(compose, name)
    settings = settings_of(svc, monkeypatch)
    grace = duration_s(svc["stop_grace_period"])
    # the worst-case stop (drain, then the servers' own grace; tests/service/test_lifecycle.py
    # measures it) ends before the engine's SIGKILL
    assert settings.shutdown_bound_s <= grace <= settings.drain_timeout_s + 15, (
        settings.shutdown_bound_s, grace)
    assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert svc["restart"] in {"always", "unless-stopped", "on-failure"}


@pytest.mark.parametrize("name", TAGGERS)
def test_vocabularies_on_a_shared_named_volume(compose, name, monkeypatch):
    svc = service(compose, name)
    vocab_dir = str(settings_of(svc, monkeypatch).vocab_dir)
    mounts = dict(v.split(":")[:2][::-1] for v in svc["volumes"])  # target -> source
    assert vocab_dir in mounts, f"{name}: nothing mounted at ML2P_VOCAB_DIR={vocab_dir}"
    assert mounts[vocab_dir] in compose["volumes"], "the vocabulary dir must be a named volume"
    trt = settings_of(svc, monkeypatch).trt_cache_dir
    if trt is not None:
        assert mounts.get(str(trt)) in compose["volumes"]


def test_bind_mounts_exist(compose):
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} does not exist"


def _mount_target(svc: dict, repo_path: str) -> str:
    for volume in svc["volumes"]:
        source, target = volume.split(":")[:2]
        if (REPO / source).resolve() == (REPO / repo_path).resolve():
            return target
    raise AssertionError(f"{repo_path} is not mounted")


def test_prometheus_scrapes_the_taggers(compose, prometheus_config, live):
    prom = compose["services"]["prometheus"]
    config_target = _mount_target(prom, "docker/prometheus.yml")
    assert f"--config.file={config_target}" in prom["command"]
    config_dir = config_target.rsplit("/", 1)[0]
    for rule_file in prometheus_config["rule_files"]:
        target = rule_file if rule_file.startswith("/") else f"{config_dir}/{rule_file}"
        assert target == _mount_target(prom, f"docker/{rule_file.rsplit('/', 1)[-1]}")
    scraped = {}
    for job in prometheus_config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") in live.routes
        for sd in job.get("dns_sd_configs", []):
            scraped |= {n: sd["port"] for n in sd["names"]}
        for static in job.get("static_configs", []):
            scraped |= dict(t.rsplit(":", 1) for t in static["targets"])
    assert set(scraped) == set(TAGGERS)
    for name, port in scraped.items():
        assert int(port) in {container_port(p) for p in compose["services"][name]["ports"]}


def test_grafana_provisioning(compose, dashboard):
    grafana = compose["services"]["grafana"]
    base = REPO / "docker" / "grafana" / "provisioning"
    assert _mount_target(grafana, "docker/grafana/provisioning") == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load((base / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    port = container_port(compose["services"]["prometheus"]["ports"][0])
    assert source["url"] == f"http://prometheus:{port}"
    (provider,) = yaml.safe_load((base / "dashboards" / "ml2p.yml").read_text())["providers"]
    assert provider["options"]["path"] == _mount_target(grafana, "docker/grafana/dashboards")
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home == f"{provider['options']['path']}/ml2p.json"
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}


def test_docker_compose_config():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here: `docker compose config` not run")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker CLI without the compose plugin: `docker compose config` not run")
    for profile in ([], ["--profile", "gpu"]):
        result = subprocess.run([docker, "compose", *profile, "config", "-q"], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def test_safe_defaults(compose):
    """Monitoring on loopback only, no Prometheus lifecycle/admin API, no default Grafana
    password, the tagger's API key passed through."""
    for name in ("prometheus", "grafana"):
        for port in compose["services"][name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} published beyond loopback"
    flags = " ".join(compose["services"]["prometheus"]["command"])
    assert "--web.enable-lifecycle" not in flags and "--web.enable-admin-api" not in flags
    password = compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), password
    assert env_of(compose["services"]["tagger"])["ML2P_API_KEY"] == "${ML2P_API_KEY:-}"


def _podman_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podman_compose", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_podman_compose_refuses_to_run_without_a_grafana_password():
    try:
        import podman_compose  # noqa: F401
    except ImportError:
        pytest.skip("podman-compose is not installed (the dev extra has it)")
    if shutil.which("podman") is None:
        pytest.skip("no podman: podman-compose cannot run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFANA_")}
    refused = _podman_compose("config", env=env)
    assert refused.returncode != 0
    assert "set GRAFANA_ADMIN_PASSWORD" in refused.stdout + refused.stderr
    accepted = _podman_compose("config", env={**env, "GRAFANA_ADMIN_PASSWORD": "x" * 16})
    assert accepted.returncode == 0, accepted.stderr
    config = yaml.safe_load(accepted.stdout)
    assert config["services"]["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
