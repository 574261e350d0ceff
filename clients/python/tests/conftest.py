"""The client's own suite runs from the installed wheel, in a virtual environment without
the service's source tree: the server it talks to is a subprocess of the service's Python
(`ML2P_SERVER_PYTHON`, in the repository `ML2P_REPO`), on a tiny generated model."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(os.environ.get("ML2P_REPO", Path(__file__).resolve().parents[3]))
SERVER_PYTHON = os.environ.get("ML2P_SERVER_PYTHON", str(REPO / ".venv" / "bin" / "python"))
KEY = "client-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`ml2p serve` in the service's environment; REST and gRPC on free loopback ports."""

    def __init__(self, model: Path, workdir: Path, tls: dict | None = None,
                 **settings: object) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.http_port}"
        self.grpc_url = f"{'grpcs' if tls else 'grpc'}://127.0.0.1:{self.grpc_port}"
        settings = {"api_key": KEY, "vocab_dir": workdir / "vocabularies",
                    "intra_op_threads": 1, "preprocess_workers": 1, **(tls or {}), **settings}
        args = [SERVER_PYTHON, "-m", "ml2p_cli", "serve", "--model", str(model),
                "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        for key, value in settings.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ML2P_")}
        self.log = workdir / f"server-{self.http_port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def wait_ready(self, verify: object = True, timeout: float = 60) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1, verify=verify).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    subprocess.run([SERVER_PYTHON, "-c", "import sys; from artifact.testing import "
                    "write_tiny_artifact; write_tiny_artifact(sys.argv[1])", str(out)],
                   cwd=REPO, check=True)
    return out


@pytest.fixture(scope="session")
def server(model, tmp_path_factory) -> Server:
    srv = Server(model, tmp_path_factory.mktemp("server")).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture()
def photo(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the TLS test certificates")
    folder = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(folder / "ca.key"),
            "-subj", "/CN=client test CA", "-days", "2", "-out", str(folder / "ca.pem"))
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(folder / "server.key"),
            "-subj", "/CN=localhost", "-out", str(folder / "server.csr"))
    openssl("x509", "-req", "-in", str(folder / "server.csr"), "-CA", str(folder / "ca.pem"),
            "-CAkey", str(folder / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(folder / "server.ext"), "-out", str(folder / "server.pem"))
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
