"""Test harness for the service: a real `ml2p serve` subprocess and small client helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx

from artifact.testing import free_port
from service.protos import load as load_protos

REPO = Path(__file__).resolve().parents[2]
pb, pb_grpc = load_protos()


class Server:
    """A `ml2p serve` subprocess; `stop()` sends SIGTERM and returns the exit code."""

    def __init__(self, model: Path, workdir: Path, *, client_tls: dict | None = None,
                 **settings: object) -> None:
        """`client_tls`: httpx keyword arguments (verify=, cert=) for a TLS server's probes."""
        self.http_port, self.grpc_port = free_port(), free_port()
        scheme = "https" if settings.get("tls_cert") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.http_port}"
        self.client_tls = client_tls or {}
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log_path = workdir / f"server-{self.http_port}.log"
        settings = {"vocab_dir": workdir / "vocabularies", "intra_op_threads": 1,
                    "preprocess_workers": 1, **settings}
        args = [sys.executable, "-m", "ml2p_cli", "serve", "--model", str(model),
                "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        for key, value in settings.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ML2P_")}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1,
                             **self.client_tls).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_target)


AUTH = (("authorization", "Bearer test-key"),)


def tag_multipart(client: httpx.Client, image: bytes, labels: list[str], path: str = "/v1/tag",
                  **fields: object) -> httpx.Response:
    """POST an image + repeated `labels` fields (+ options) as multipart."""
    data = {"labels": labels, **{k: str(v) for k, v in fields.items()}}
    return client.post(path, files={"image": ("image.png", image, "image/png")}, data=data)


def error_of(response: httpx.Response) -> dict:
    """The `error` object of an error response (asserting the one error schema)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]) <= {"code", "message", "field"}, body
    return body["error"]
