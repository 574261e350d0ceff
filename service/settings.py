"""Every serving setting in one place.

Each field is an `ML2P_<NAME>` environment variable (e.g. `ML2P_HTTP_PORT=8080`); `ml2p serve`
flags override the environment. The defaults below are the documented defaults.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EngineName = Literal["onnxruntime-cpu", "onnxruntime-gpu", "torch"]
POLICY_FIELDS = ("inference_workers", "intra_op_threads", "max_batch_size", "preprocess_workers")


def execution_policy(engine: str, cores: int) -> dict[str, int]:
    """The default execution policy for an engine on a machine with `cores` CPUs.

    ONNX Runtime on CPU: one inference worker per core, each batch (at most 4 images) on all
    the cores' intra-op threads, decode/preprocess on one thread per core; so two batches
    overlap each other and the decoding, and a lone request still uses every core. Measured
    best of the candidates by `ml2p bench policy` (benchmarks/results/policy.md). GPU
    engines: dynamic batching into one worker, batches up to 32.
    """
    if engine == "onnxruntime-cpu":
        return {"inference_workers": cores, "intra_op_threads": cores, "max_batch_size": 4,
                "preprocess_workers": cores}
    return {"inference_workers": 1, "intra_op_threads": 0, "max_batch_size": 32,
            "preprocess_workers": cores}


# After the drain, the HTTP server waits at most this for its handlers to finish and the gRPC
# server at most this for its RPCs (a batch that outlasts the drain is cut off, not waited for)
STOP_GRACE_S = 1.0
KEY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEFAULT_KEY_NAME = "default"  # the name ML2P_API_KEY is logged and counted under
_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


def read_api_keys(path: Path) -> dict[str, bytes]:
    """A key file: one `name:key` a line, `#` comments and blank lines ignored. The name is
    what logs and metrics show; the key is the Bearer token. ValueError, naming the line (never
    the key), on anything else."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the key file ({exc.strerror or exc})") from None
    keys: dict[str, bytes] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, key = (part.strip() for part in line.partition(":"))
        if not sep or not key or any(c.isspace() for c in key):
            raise ValueError(f"{path}:{number}: expected `name:key` (a key without spaces)")
        if not KEY_NAME.fullmatch(name):
            raise ValueError(f"{path}:{number}: key name {name!r}: 1-64 letters, digits, "
                             "'.', '_', '-'")
        if name in keys:
            raise ValueError(f"{path}:{number}: key name {name!r} given twice")
        if key.encode() in keys.values():
            raise ValueError(f"{path}:{number}: the key of {name!r} is also another name's key")
        keys[name] = key.encode()
    if not keys:
        raise ValueError(f"{path}: no keys (expected `name:key` lines)")
    return keys


def _policy_default(name: str):  # noqa: ANN202 - a pydantic default factory
    def factory(data: dict) -> int:
        return execution_policy(data.get("engine", "onnxruntime-cpu"), os.cpu_count() or 2)[name]
    return factory


class Settings(BaseSettings):
    """Serving settings (`ML2P_*` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="ML2P_", extra="ignore", frozen=True)

    # --- network --------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="bind address of both servers")
    http_port: int = Field(8000, ge=0, le=65535, description="REST port (0 = disabled)")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = disabled)")

    # --- model and engine -----------------------------------------------------------------
    model: Path = Field(Path("models/zoo/default"), description="model artifact directory")
    engine: EngineName = Field("onnxruntime-cpu", description="runtime engine")
    precision: Literal["fp32", "fp16", "int8", "auto"] = Field(
        "auto", description="visual graph served: auto = int8 on CPU when the manifest records "
        "that it passed the accuracy gate, else fp32")
    intra_op_threads: int = Field(
        default_factory=_policy_default("intra_op_threads"), ge=0,
        description="ONNX Runtime intra-op threads (0 = ONNX Runtime's own choice)")
    inter_op_threads: int = Field(1, ge=0, description="ONNX Runtime inter-op threads")
    intra_op_spinning: bool = Field(
        False, description="ONNX Runtime threads busy-wait between ops (only pays off on cores "
        "not shared with the HTTP/gRPC/preprocessing threads)")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisation level")
    memory_arena: bool = Field(True, description="ONNX Runtime CPU memory arena")
    device_id: int = Field(0, ge=0, description="GPU ordinal for the GPU engines")
    fp16: bool = Field(False, description="fp16 on GPU engines (TensorRT / torch)")
    trt_cache_dir: Path | None = Field(None, description="TensorRT engine cache (GPU engine)")
    warmup: bool = Field(True, description="run one batch through both graphs before ready")

    # --- batching -------------------------------------------------------------------------
    max_batch_size: int = Field(default_factory=_policy_default("max_batch_size"), ge=1, le=1024,
                                description="images per inference batch")
    max_queue_delay_ms: float = Field(
        5.0, ge=0, description="longest wait (from the first queued image) for a batch to "
        "fill while another batch runs; an idle engine never waits (so with one inference "
        "worker batches form from what queued during the previous batch)"
    )
    max_queue_size: int = Field(
        256, ge=1, description="images waiting for inference; the server holds at most this "
        "plus inference_workers x max_batch_size images (decoding, queued, running), 429 beyond")
    inference_workers: int = Field(default_factory=_policy_default("inference_workers"), ge=1,
                                   le=16, description="batches run concurrently")
    max_concurrent_requests: int = Field(
        64, ge=0, description="requests with a body (tagging, vocabularies) admitted at once per "
        "protocol; beyond it 429 / RESOURCE_EXHAUSTED before the body is read; it bounds the "
        "memory held for request bodies (0 = the image capacity, max_queue_size + "
        "inference_workers x max_batch_size)")
    preprocess_workers: int = Field(default_factory=_policy_default("preprocess_workers"), ge=1,
                                    le=64, description="decode/preprocess threads")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request deadline (504)")
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 429")
    inference_delay_ms: float = Field(
        0.0, ge=0, description="testing/benchmarks only: sleep added to every image batch"
    )

    # --- limits ---------------------------------------------------------------------------
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="request body (413)")
    max_pixels: int = Field(50_000_000, ge=1, description="declared image pixels (413)")
    max_images: int = Field(32, ge=1, description="images per batch request (422)")
    max_score_vectors: int = Field(2048, ge=1,
                                   description="stored vector sets per /v1/score request (422)")
    max_labels: int = Field(1000, ge=1, description="labels per request (422)")
    max_label_chars: int = Field(200, ge=1, description="characters per label (422)")
    max_vocabulary_labels: int = Field(20000, ge=1, description="labels per vocabulary (422)")
    explain_max_maps: int = Field(20, ge=1, description="relevance maps per request: "
                                  "explain_top_k x images (422)")

    # --- label side -----------------------------------------------------------------------
    label_cache_size: int = Field(100_000, ge=0, description="cached label embeddings (LRU)")
    label_workers: int = Field(
        0, ge=0, le=64, description="label-embedding threads (0 = half the cores, at least 1); "
        "request labels go before vocabulary chunks")
    label_delay_ms: float = Field(
        0.0, ge=0, description="testing/benchmarks only: sleep added per label embedded")
    vocab_dir: Path = Field(
        Path.home() / ".cache" / "ml2p" / "vocabularies", description="stored vocabularies"
    )
    builtin_vocabularies: bool = Field(True, description="serve nus-wide-81, voc-20, imagenet-1k")

    # --- operations -----------------------------------------------------------------------
    api_key: SecretStr | None = Field(None, description="Bearer key for tag/vocabulary/models "
                                      f"(logged and counted as {DEFAULT_KEY_NAME!r})")
    api_keys_file: Path | None = Field(
        None, description="named Bearer keys, one `name:key` a line: logs and the "
        "ml2p_authenticated_requests metric carry the name of the key used, never the key")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="browser origins (scheme://host[:port]) allowed to call the REST API, "
        "comma-separated, or * for any; empty: no CORS headers (browsers refuse cross-origin "
        "calls)")
    tls_cert: Path | None = Field(None, description="PEM certificate (chain): serve REST and "
                                                    "gRPC over TLS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle: require client "
                                                         "certificates signed by it (mutual TLS)")
    drain_timeout_s: float = Field(30.0, ge=0, description="SIGTERM: wait for in-flight work")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one object per line with the request id; text: for humans")

    def policy(self) -> dict:
        """The execution policy in force, and for each knob whether it is the device's default
        (`auto`) or was set (`setting`: environment or flag); `/v1/models` reports it."""
        return {**{name: getattr(self, name) for name in POLICY_FIELDS},
                "max_queue_delay_ms": self.max_queue_delay_ms, "engine": self.engine,
                "cores": os.cpu_count() or 2,
                "source": {name: "setting" if name in self.model_fields_set else "auto"
                           for name in POLICY_FIELDS}}

    @property
    def admitted_requests(self) -> int:
        """`max_concurrent_requests`, or the image capacity when 0."""
        return self.max_concurrent_requests or self.image_capacity

    @property
    def image_capacity(self) -> int:
        """Images the server holds at most (decoding, queued, running); 429 beyond."""
        return self.max_queue_size + self.inference_workers * self.max_batch_size

    def request_memory_bound(self, input_size: int = 224) -> int:
        """Bytes the server may hold for requests at once, above its idle size, from these
        settings: per protocol `admitted_requests` bodies, each held up to three times (the
        received bytes, a base64 / protobuf decoded copy, a parsed copy); the images being
        decoded (`preprocess_workers`, each up to 8 bytes per pixel of `max_pixels` through
        the RGBA / RGB conversions); the model inputs of every image the pipeline holds
        (float32 3 x input_size^2); and 64 MiB for the allocator's slack."""
        bodies = 2 * self.admitted_requests * 3 * self.max_body_bytes
        decoding = self.preprocess_workers * 8 * self.max_pixels
        inputs = self.image_capacity * 3 * input_size * input_size * 4
        return bodies + decoding + inputs + 64 * 2**20

    @property
    def shutdown_bound_s(self) -> float:
        """Longest SIGTERM-to-exit: the drain, the HTTP and the gRPC server's grace after it
        (STOP_GRACE_S each) and one second to close the engine and exit. A container's stop
        grace period (compose `stop_grace_period`) must be at least this."""
        return self.drain_timeout_s + 2 * STOP_GRACE_S + 1.0

    @property
    def label_workers_count(self) -> int:
        """`label_workers`, or half this machine's cores (at least one) when 0."""
        return self.label_workers or max(1, (os.cpu_count() or 2) // 2)

    @field_validator("api_key", "api_keys_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_keys_file")
    @classmethod
    def _key_file_valid(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and DEFAULT_KEY_NAME in read_api_keys(value) \
                and info.data.get("api_key") is not None:
            raise ValueError(f"{value}: the name {DEFAULT_KEY_NAME!r} is ML2P_API_KEY's; "
                             "use another name in the key file")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for origin in value if isinstance(value, list | tuple) else ():
            if origin != "*" and not _ORIGIN.fullmatch(str(origin)):
                raise ValueError(f"{origin!r} is not an origin: expected scheme://host[:port] "
                                 "(no path, no trailing slash) or *")
        return value

    @cached_property
    def api_keys(self) -> dict[str, bytes]:
        """Key name -> key, of ML2P_API_KEY and the key file; empty: no authentication."""
        keys = read_api_keys(self.api_keys_file) if self.api_keys_file is not None else {}
        if self.api_key is not None:
            keys[DEFAULT_KEY_NAME] = self.api_key.get_secret_value().encode()
        return keys

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key (PEM files)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (client certificates) needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        return self

    def grpc_credentials(self):  # noqa: ANN201 - grpc.ServerCredentials | None
        """The gRPC server credentials of the TLS settings (None: plaintext)."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        import grpc

        ca = Path(self.tls_client_ca).read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())],
            root_certificates=ca, require_client_auth=ca is not None)

    def uvicorn_tls(self) -> dict:
        """uvicorn's TLS arguments of the TLS settings (empty: plaintext)."""
        if self.tls_cert is None:
            return {}
        import ssl

        tls = {"ssl_certfile": str(self.tls_cert), "ssl_keyfile": str(self.tls_key)}
        if self.tls_client_ca is not None:
            tls |= {"ssl_ca_certs": str(self.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return tls

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
