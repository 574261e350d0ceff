"""`ml2p bench uploads`: a burst of large uploads against the server's memory bound.

One `ml2p serve` with its default settings (or `--set KEY=VALUE`); for each protocol, `--uploads`
clients send a `--megabytes` MB image at once (a valid JPEG padded after its end marker, so
decoding is cheap and the body is what costs memory): REST as multipart `POST /v1/tag`, gRPC
as `Tag`. The server admits `max_concurrent_requests` per protocol and must refuse the rest
with 429 / RESOURCE_EXHAUSTED before reading their bodies. Reported per protocol: answers by
status, refusals without the right status (must be 0), the server's peak RSS (sampled every
20 ms) above its idle RSS (before the first burst), against `Settings.request_memory_bound()`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks import command_main, report_header, serve_bench, serve_compare, write_report

REPO = Path(__file__).resolve().parents[1]


def padded_jpeg(size: int) -> bytes:
    """A small valid JPEG padded to `size` bytes after its end marker (decoders stop there)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 140, 200)).save(buffer, format="JPEG")
    return buffer.getvalue() + b"\0" * (size - buffer.tell())


class PeakRSS:
    """The highest resident memory of a process, sampled every 20 ms while in use."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def rest_burst(url: str, body: bytes, uploads: int) -> list[tuple[int, str]]:
    """(status, error code) per upload, all sent at once."""
    import httpx

    parts = {"image": ("big.jpg", body, "image/jpeg")}
    limits = httpx.Limits(max_connections=uploads)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def one() -> tuple[int, str]:
            try:
                reply = await client.post("/v1/tag", files=parts,
                                          data={"labels": ["sky", "dog"]})
            except httpx.TransportError as exc:
                return 0, type(exc).__name__
            code = reply.json().get("error", {}).get("code", "") if reply.status_code != 200 \
                else ""
            return reply.status_code, code
        return await asyncio.gather(*(one() for _ in range(uploads)))


async def grpc_burst(target: str, body: bytes, uploads: int) -> list[tuple[str, str]]:
    """(status code name, details) per upload, all sent at once, each on its own channel (one
    HTTP/2 connection would carry them one after another)."""
    import grpc

    from service.protos import load

    pb, pb_grpc = load()
    options = [("grpc.max_send_message_length", len(body) + 2**20)]
    request = pb.TagRequest(image=body, labels=["sky", "dog"])

    async def one() -> tuple[str, str]:
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            try:
                await pb_grpc.TaggerStub(channel).Tag(request, timeout=300)
                return "OK", ""
            except grpc.aio.AioRpcError as exc:
                return exc.code().name, exc.details() or ""
    return await asyncio.gather(*(one() for _ in range(uploads)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench uploads`."""
    parser.add_argument("--model", default=str(REPO / "models" / "zoo" / "default"))
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--megabytes", type=float, default=20.0,
                        help="upload size in MiB (just under max_body_bytes by default)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="server settings (flags of `ml2p serve`, without --)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "uploads.json"))


def run(args: argparse.Namespace) -> int:
    import psutil

    from artifact.loader import load_artifact
    from service.settings import Settings

    overrides = dict(item.split("=", 1) for item in args.set)
    settings = Settings(**overrides)
    model = Path(args.model)
    input_size = load_artifact(model).preprocessing.size
    bound = settings.request_memory_bound(input_size)
    size = min(int(args.megabytes * 2**20), settings.max_body_bytes - 64 * 1024)
    body = padded_jpeg(size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ml2p-uploads-") as tmp:
        proc, url, target = serve_bench._start_server(model, Path(tmp), overrides)
        try:
            idle = psutil.Process(proc.pid).memory_info().rss  # before any upload
            for protocol in ("rest", "grpc"):
                started = time.perf_counter()
                with PeakRSS(proc.pid) as rss:
                    if protocol == "rest":
                        answers = asyncio.run(rest_burst(url, body, args.uploads))
                        refused = [a for a in answers if a[0] == 429]
                        wrong = [a for a in refused if a[1] != "queue_full"]
                        other = [a for a in answers if a[0] not in (200, 429)]
                    else:
                        answers = asyncio.run(grpc_burst(target, body, args.uploads))
                        refused = [a for a in answers if a[0] == "RESOURCE_EXHAUSTED"]
                        wrong = []
                        other = [a for a in answers if a[0] not in ("OK", "RESOURCE_EXHAUSTED")]
                took = time.perf_counter() - started
                rows.append({
                    "protocol": protocol, "uploads": args.uploads, "body_bytes": len(body),
                    "answers": {str(k): v for k, v in Counter(a[0] for a in answers).items()},
                    "refused": len(refused), "refused_without_queue_full_code": len(wrong),
                    "other_outcomes": [list(a) for a in other[:5]],
                    "idle_rss_mb": round(idle / 2**20, 1),
                    "peak_rss_mb": round(rss.peak / 2**20, 1),
                    "peak_above_idle_mb": round((rss.peak - idle) / 2**20, 1),
                    "bound_mb": round(bound / 2**20, 1),
                    "under_bound": rss.peak - idle <= bound, "seconds": round(took, 1),
                    "server_alive": proc.poll() is None})
                print(f"uploads {rows[-1]}", flush=True)
        finally:
            serve_compare._stop(proc)
    report = {
        **report_header("uploads", args.argv, model),
        "settings": {"max_concurrent_requests": settings.admitted_requests,
                     "max_body_bytes": settings.max_body_bytes,
                     "preprocess_workers": settings.preprocess_workers,
                     "max_pixels": settings.max_pixels, "image_capacity": settings.image_capacity,
                     "overrides": overrides},
        "bound_formula": Settings.request_memory_bound.__doc__.split("settings: ", 1)[-1],
        "results": rows,
    }
    return write_report(Path(args.out), report, markdown)


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# A burst of large uploads ({report['created']})", "",
             f"Command: `{report['command']}`. Model `{report['model']}`, "
             f"{report['machine']['cpus']} CPUs. Settings: {s['max_concurrent_requests']} "
             f"requests admitted at once per protocol, bodies up to {s['max_body_bytes']} "
             f"bytes, {s['preprocess_workers']} decode threads, image capacity "
             f"{s['image_capacity']}. The bound (`Settings.request_memory_bound`): "
             f"{' '.join(report['bound_formula'].split())}", "",
             "| protocol | uploads | body MiB | answers | refused | refused without the "
             "queue_full code | idle RSS MiB | peak RSS MiB | peak above idle MiB | bound MiB "
             "| under bound | s |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in report["results"]:
        answers = ", ".join(f"{k}: {v}" for k, v in r["answers"].items())
        lines.append(f"| {r['protocol']} | {r['uploads']} | {r['body_bytes'] / 2**20:.1f} | "
                     f"{answers} | {r['refused']} | {r['refused_without_queue_full_code']} | "
                     f"{r['idle_rss_mb']} | {r['peak_rss_mb']} | {r['peak_above_idle_mb']} | "
                     f"{r['bound_mb']} | {'yes' if r['under_bound'] else 'NO'} | "
                     f"{r['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return command_main("uploads", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
