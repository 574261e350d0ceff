"""Fixtures for the deployment checks: the parsed files and one real, exercised server.

`live` is a real `ml2p serve` process (tests/service/server_harness.py) on a tiny generated
artifact (or `ML2P_TEST_MODEL`), after REST and gRPC tagging traffic, with its /metrics
exposition and OpenAPI routes: the names the compose file, the Dockerfiles, the alert rules
and the dashboard may use are read from it, not from lists kept in the tests.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from deploy_support import API_KEY, LABELS, REPO  # noqa: E402
from server_harness import Server, pb, pb_grpc  # noqa: E402

from artifact.testing import image_bytes, write_tiny_artifact  # noqa: E402


@dataclass
class Live:
    """A ready server plus what it exposes."""

    server: Server
    samples: dict[str, set[str]]          # sample name -> label names seen on it
    label_values: dict[str, set[str]]     # label name -> values seen (any ml2p_ sample)
    routes: set[str]                      # REST paths (OpenAPI) + /metrics etc.
    grpc_methods: set[str]                # Tagger service method names
    families: set[str]                    # metric family names (counters without _total)

    @property
    def endpoints(self) -> set[str]:
        """Every value the `endpoint` label can take that we know of."""
        return self.routes | self.grpc_methods | self.label_values.get("endpoint", set())

    def scrape(self) -> str:
        return httpx.get(f"{self.server.url}/metrics", timeout=10).text


def parse_exposition(text: str) -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
    samples: dict[str, set[str]] = {}
    values: dict[str, set[str]] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
            if sample.name.startswith("ml2p_"):
                for key, value in sample.labels.items():
                    values.setdefault(key, set()).add(value)
    return samples, values, families


@pytest.fixture(scope="session")
def deploy_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("ML2P_TEST_MODEL")
    if given:
        return Path(given)
    return write_tiny_artifact(tmp_path_factory.mktemp("deploy-tiny") / "artifact")


@pytest.fixture(scope="session")
def live(deploy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("deploy-server")
    # a named key, so the per-key request counter is exported with its labels like the rest
    (work / "keys").write_text(f"deploy-test:{API_KEY}\n")
    server = Server(deploy_model_dir, work, max_batch_size=8, api_keys_file=work / "keys")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    try:
        server.wait_ready()
        png = image_bytes()
        with httpx.Client(base_url=server.url, timeout=30, headers=auth) as client:
            for path in ("/v1/tag", "/tag"):
                response = client.post(path, files={"image": ("a.png", png, "image/png")},
                                       data={"labels": LABELS})
                assert response.status_code == 200, response.text
            bad = client.post("/v1/tag", files={"image": ("b.png", b"not an image", "image/png")},
                              data={"labels": LABELS})
            assert bad.status_code == 400, bad.text
            routes = set(client.get("/openapi.json").json()["paths"])
        with server.channel() as channel:
            stub = pb_grpc.TaggerStub(channel)
            metadata = (("authorization", auth["Authorization"]),)
            stub.Tag(pb.TagRequest(image=png, labels=LABELS), timeout=30, metadata=metadata)
            list(stub.TagStream(iter([pb.TagRequest(image=png, labels=LABELS)] * 2),
                                timeout=30, metadata=metadata))
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        samples, values, families = parse_exposition(text)
        methods = set(pb.DESCRIPTOR.services_by_name["Tagger"].methods_by_name)
        yield Live(server, samples, values, routes, methods, families)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def alert_rules() -> dict:
    return yaml.safe_load((REPO / "docker" / "alerts.yml").read_text())


@pytest.fixture(scope="session")
def prometheus_config() -> dict:
    return yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())


@pytest.fixture(scope="session")
def dashboard() -> dict:
    return json.loads((REPO / "docker" / "grafana" / "dashboards" / "ml2p.json").read_text())
