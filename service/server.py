"""One process, one engine: REST (uvicorn) and gRPC (grpc.aio) on one event loop.

Start-up: the artifact is loaded and checked before any port is bound (a broken artifact exits
with one message); then both servers listen (`/livez` 200) while the model warms up in the
background (`/readyz` 503 until READY). SIGTERM/SIGINT: readiness and gRPC health go
NOT_SERVING, new work gets 503 / UNAVAILABLE, in-flight and queued requests finish (at most
`drain_timeout_s`), then both servers stop and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn

from service.pipeline import TaggingService, build_service
from service.settings import STOP_GRACE_S, Settings

log = logging.getLogger("ml2p.server")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (OSError naming the address when it is taken).

    Created with proto=IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections
    (with proto 0 it does not, and Nagle + delayed ACK add ~40 ms to every response).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: this module owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, service: TaggingService | None = None) -> int:
    """Run until SIGTERM/SIGINT, drain, stop. Returns the exit code."""
    from service.api.grpc_server import start_grpc_server
    from service.api.http import create_app

    service = service or build_service(settings)
    await service.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    grpc_server = None
    if settings.grpc_port:
        grpc_server = await start_grpc_server(service, settings.host, settings.grpc_port)
        log.info("gRPC listening", extra={"host": settings.host, "port": grpc_server.port})
    http_server = http_task = None
    if settings.http_port:
        sock = bind_socket(settings.host, settings.http_port)
        config = uvicorn.Config(
            create_app(service), host=settings.host, port=settings.http_port, log_config=None,
            # the drain already waited for the requests; this only bounds what is left after it
            # (drain + this + gRPC's grace = Settings.shutdown_bound_s)
            access_log=False, lifespan="on", timeout_graceful_shutdown=STOP_GRACE_S,
            timeout_keep_alive=5, **settings.uvicorn_tls())
        http_server = _UvicornServer(config)
        http_task = loop.create_task(http_server.serve(sockets=[sock]))
        log.info("HTTP listening", extra={"host": settings.host, "port": settings.http_port,
                                          "tls": settings.tls_cert is not None})

    stop_task = loop.create_task(stop.wait())
    waiting = {stop_task} | ({http_task} if http_task else set())
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if http_task in done:  # uvicorn ended by itself: it could not bind or start
        log.error("HTTP server stopped unexpectedly")
        code = 1
    log.info("shutting down: draining in-flight requests",
             extra={"drain_timeout_s": settings.drain_timeout_s})
    await service.drain(settings.drain_timeout_s)
    if http_server is not None and http_task is not None:
        http_server.should_exit = True
        with contextlib.suppress(SystemExit):
            await http_task
    if grpc_server is not None:
        await grpc_server.stop(grace=STOP_GRACE_S)
    await service.close()
    stop_task.cancel()
    log.info("stopped", extra={"exit_code": code})
    return code
