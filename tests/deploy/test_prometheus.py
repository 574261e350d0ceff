"""A real Prometheus scrapes a real tagger; the alert rules and dashboard queries run in it.

Needs the `prometheus` binary (Debian package `prometheus`, which .ci/run installs) and skips
without it. Everything is on loopback: the server from the `live` fixture, Prometheus on a
free port with its storage in a temp dir, scraping every second; bounded to 60 s.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from deploy_support import API_KEY, LABELS, REPO

from artifact.testing import free_port, image_bytes

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
RULES = REPO / "docker" / "alerts.yml"
CONFIG = REPO / "docker" / "prometheus.yml"
BUDGET_S = 60.0

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no `prometheus` binary on PATH (apt-get install prometheus)")


def _promtool(*args: str) -> None:
    if PROMTOOL is None:
        return
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def prometheus(live, tmp_path: Path):
    """Prometheus scraping the live server as the compose job does; yields its base URL."""
    job = yaml.safe_load(CONFIG.read_text())["scrape_configs"][0]["job_name"]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics",
                            "static_configs": [{"targets": [
                                f"127.0.0.1:{live.server.http_port}"]}]}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    _promtool("check", "config", str(config_path))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready after 20 s"
            time.sleep(0.2)
        yield url, job
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _query(url: str, expr: str) -> list[dict]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _served(live) -> float:
    text = live.scrape()
    return sum(float(m[1]) for m in re.finditer(
        r'^ml2p_request_duration_seconds_count\{[^}]*endpoint="/v1/tag"[^}]*status="200"[^}]*\}'
        r" (\S+)$", text, re.M))


def test_prometheus_scrapes_the_server_and_evaluates_rules_and_panels(live, prometheus,
                                                                       dashboard):
    started = time.monotonic()
    url, job = prometheus
    counter = (f'sum(ml2p_request_duration_seconds_count{{job="{job}", endpoint="/v1/tag", '
               f'status="200"}})')
    while not _query(url, counter):  # one scrape before the traffic, so rate() sees it
        assert time.monotonic() - started < BUDGET_S / 3, "the tagger was never scraped"
        time.sleep(0.3)
    before = _served(live)
    png = image_bytes()
    with httpx.Client(base_url=live.server.url, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        for _ in range(5):
            response = client.post("/v1/tag", files={"image": ("a.png", png, "image/png")},
                                   data={"labels": LABELS})
            assert response.status_code == 200
    assert _served(live) == before + 5

    value = None
    while time.monotonic() - started < BUDGET_S / 2:
        result = _query(url, counter)
        value = float(result[0]["value"][1]) if result else None
        if value is not None and value >= before + 5:
            break
        time.sleep(0.5)
    assert value is not None and value >= before + 5, f"request counter in Prometheus: {value}"

    # every alert rule loaded and evaluated without error
    while True:
        groups = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        if loaded and all(r["health"] == "ok" for r in loaded):
            break
        bad = [(r["name"], r.get("lastError")) for r in loaded if r["health"] == "err"]
        assert not bad, bad
        assert time.monotonic() - started < BUDGET_S, [(r["name"], r["health"]) for r in loaded]
        time.sleep(0.5)
    expected = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"]}
    assert {r["name"] for r in loaded} == expected

    # every dashboard query is valid PromQL here; the ones that do not select error statuses
    # (which this traffic has none of) return data
    pending = [(p["title"], t["expr"].replace("$__rate_interval", "1m"))
               for p in dashboard["panels"] for t in p["targets"]]
    while pending:
        title, expr = pending[0]
        result = _query(url, expr)
        if result or "status=" in expr:
            pending.pop(0)
            continue
        assert time.monotonic() - started < BUDGET_S, f"panel {title!r}: no data for {expr}"
        time.sleep(0.5)

    p95 = _query(url, 'histogram_quantile(0.95, sum by (le) (rate('
                      'ml2p_request_duration_seconds_bucket{endpoint="/v1/tag"}[1m])))')
    assert p95 and math.isfinite(float(p95[0]["value"][1]))
