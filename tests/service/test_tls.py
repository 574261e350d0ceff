"""TLS through the real server: REST and gRPC from certificate and key paths, verified by the
clients against the test CA (and refused by a client that trusts only the system CAs), and
mutual TLS when a client CA is set. Certificates are made by the `openssl` command."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
from server_harness import Server, pb, pb_grpc, tag_multipart

from artifact.testing import image_bytes

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the openssl command makes the test certificates")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(ca: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    folder = ca.parent
    key, csr, cert = (folder / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    ext = folder / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
             "-subj", subject, "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey",
             str(folder / "ca.key"), "-CAcreateserial", "-days", "2", "-sha256",
             "-extfile", str(ext), "-out", str(cert))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("pki")
    ca = folder / "ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
             str(folder / "ca.key"), "-subj", "/CN=ml2p test CA", "-days", "2", "-out", str(ca))
    server = _signed(ca, "server", "/CN=localhost",
                     "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    client = _signed(ca, "client", "/CN=ml2p client", "extendedKeyUsage=clientAuth\n")
    return {"ca": ca, "server": server, "client": client}


def _context(pki: dict, client_cert: bool) -> ssl.SSLContext:
    """A client's TLS context trusting the test CA, with the client certificate if asked."""
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if client_cert:
        context.load_cert_chain(*(str(p) for p in pki["client"]))
    return context


def _start(model_dir: Path, tmp_path: Path, pki: dict, mutual: bool) -> Server:
    cert, key = pki["server"]
    settings = {"tls_cert": cert, "tls_key": key}
    if mutual:
        settings["tls_client_ca"] = pki["ca"]
    return Server(model_dir, tmp_path, client_tls={"verify": _context(pki, mutual)},
                  **settings).wait_ready()


def _grpc_tag(server: Server, credentials: grpc.ChannelCredentials | None) -> pb.TagResponse:
    channel = (grpc.secure_channel(server.grpc_target, credentials) if credentials
               else grpc.insecure_channel(server.grpc_target))
    with channel:
        return pb_grpc.TaggerStub(channel).Tag(pb.TagRequest(image=image_bytes(),
                                                             labels=["dog"]), timeout=10)


def test_rest_and_grpc_over_tls(model_dir, tmp_path, pki):
    server = _start(model_dir, tmp_path, pki, mutual=False)
    try:
        assert server.url.startswith("https://")
        with httpx.Client(base_url=server.url, verify=_context(pki, False),
                          timeout=30) as client:
            assert tag_multipart(client, image_bytes(), ["dog"]).status_code == 200
        with pytest.raises(httpx.ConnectError):  # the default client trusts system CAs only
            httpx.get(f"{server.url}/livez", timeout=5)
        with pytest.raises(httpx.TransportError):  # no plaintext on the TLS port
            httpx.get(server.url.replace("https://", "http://") + "/livez", timeout=5)
        reply = _grpc_tag(server, grpc.ssl_channel_credentials(pki["ca"].read_bytes()))
        assert [t.label for t in reply.tags] == ["dog"]
        with pytest.raises(grpc.RpcError) as info:
            _grpc_tag(server, None)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


def test_mutual_tls_requires_a_client_certificate(model_dir, tmp_path, pki):
    server = _start(model_dir, tmp_path, pki, mutual=True)
    cert, key = (str(p) for p in pki["client"])
    try:
        with httpx.Client(base_url=server.url, verify=_context(pki, True),
                          timeout=30) as client:
            assert tag_multipart(client, image_bytes(), ["dog"]).status_code == 200
        with pytest.raises(httpx.TransportError):  # trusted server, but no client certificate
            httpx.get(f"{server.url}/livez", verify=_context(pki, False), timeout=5)
        ca = pki["ca"].read_bytes()
        with_cert = grpc.ssl_channel_credentials(ca, Path(key).read_bytes(),
                                                 Path(cert).read_bytes())
        assert [t.label for t in _grpc_tag(server, with_cert).tags] == ["dog"]
        with pytest.raises(grpc.RpcError) as info:
            _grpc_tag(server, grpc.ssl_channel_credentials(ca))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


def test_half_a_tls_setting_is_refused(tmp_path, pki):
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="both tls_cert and tls_key"):
        Settings(tls_cert=pki["server"][0])
    with pytest.raises(ValidationError, match="not a readable file"):
        Settings(tls_cert=tmp_path / "missing.pem", tls_key=pki["server"][1])
