"""Fixtures: a model artifact (tiny generated, or `ML2P_TEST_MODEL=<dir>`) and real servers.

Servers are real `python -m ml2p_cli serve` processes on free loopback ports, talked to
with httpx and the generated gRPC stubs (see server_harness.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from server_harness import Server, pb_grpc

from artifact.testing import image_bytes, write_tiny_artifact


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The artifact under test: `ML2P_TEST_MODEL` if set, else a tiny generated one."""
    given = os.environ.get("ML2P_TEST_MODEL")
    if given:
        return Path(given)
    return write_tiny_artifact(tmp_path_factory.mktemp("tiny") / "artifact")


@pytest.fixture(scope="session")
def manifest(model_dir: Path) -> dict:
    return json.loads((model_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The main server: API key on, small label/body/pixel limits so limit tests are cheap."""
    srv = Server(model_dir, tmp_path_factory.mktemp("main"), api_key="test-key",
                 max_labels=50, max_vocabulary_labels=60, max_label_chars=2000,
                 max_body_bytes=1_000_000,
                 max_pixels=1_000_000, max_images=4, max_batch_size=8)
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def http(server: Server):
    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"Authorization": "Bearer test-key"}) as client:
        yield client


@pytest.fixture(scope="session")
def stub(server: Server):
    with server.channel() as channel:
        yield pb_grpc.TaggerStub(channel)


@pytest.fixture(scope="session")
def png() -> bytes:
    return image_bytes()
