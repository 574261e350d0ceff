"""The serving side's `ml2p` sub-commands: `serve` and `tag`, with one flag per setting.

Registered on the `ml2p` parser by `ml2p_cli` (the entry point), which adds the training and
benchmark commands when those packages are installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import get_args

from pydantic import ValidationError

from service.settings import Settings


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per setting; unset flags fall back to `ML2P_*` and then the default."""
    group = parser.add_argument_group("settings (each also ML2P_<NAME>)")
    for name, field in Settings.model_fields.items():
        choices = get_args(field.annotation) if "Literal" in str(field.annotation) else None
        default = field.default.get_secret_value() if hasattr(field.default, "get_secret_value") \
            else field.default
        if field.default_factory is not None:
            default = "the execution policy for the engine and cores"
        if field.annotation is bool:  # a switch: `--warmup`; `--warmup false` still parses
            shape, note = {"nargs": "?", "const": "true", "metavar": "BOOL"}, \
                "; a value after the flag is deprecated"
        else:
            shape, note = {"choices": choices or None,
                           "metavar": None if choices else "VALUE"}, ""
        # SUPPRESS: an unset flag leaves no attribute (so the environment decides), and the
        # help formatter does not append a second "(default: None)"
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"setting_{name}",
                           default=argparse.SUPPRESS, **shape,
                           help=f"{field.description or ''} (default: {default}{note})")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    flags = {k.removeprefix("setting_"): v for k, v in vars(args).items()
             if k.startswith("setting_") and v is not None}
    return Settings(**flags)


def _fail(message: str, code: int = 2) -> int:
    print(f"ml2p: error: {message}", file=sys.stderr)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    from artifact.errors import ArtifactError
    from service.logs import configure_logging
    from service.pipeline import build_service
    from service.runtime import EngineUnavailable
    from service.server import serve

    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format)
    try:
        service = build_service(settings)
    except (ArtifactError, EngineUnavailable) as exc:
        return _fail(f"cannot start: {exc}")
    try:
        code = asyncio.run(serve(settings, service))
    except OSError as exc:
        return _fail(f"cannot start: {exc}")
    # Both servers are closed. A batch that outlasted the drain may still be running on an
    # inference thread, and interpreter exit would join it (ThreadPoolExecutor's atexit hook),
    # stretching the stop past Settings.shutdown_bound_s; nothing will read its result.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _unreadable(paths: list[str]) -> str | None:
    """Why the first of `paths` that cannot be read as a file cannot, else None."""
    for path in paths:
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            return f"{path}: no such file"
        except IsADirectoryError:
            return f"{path}: is a directory, not an image file"
        except OSError as exc:
            return f"{path}: cannot be read ({exc.strerror})"
    return None


def cmd_tag(args: argparse.Namespace) -> int:
    if bool(args.labels) == bool(args.vocabulary):
        return _fail("give --labels or --vocabulary (exactly one)")
    problem = _unreadable(args.images)
    if problem:
        return _fail(problem)
    options = {"top_k": args.top_k, "min_probability": args.min_probability,
               "min_score": args.min_score}
    results = _tag_remote(args, options) if args.url else asyncio.run(_tag_local(args, options))
    if isinstance(results, int):
        return results
    for path, result in zip(args.images, results, strict=True):
        if args.json:
            print(json.dumps({"image": path, **result}))
            continue
        print(path)
        if "error" in result:
            print(f"  error: {result['error']['message']}")
        for tag in result.get("tags", []):
            prob = f"  p={tag['probability']:.3f}" if tag.get("probability") is not None else ""
            print(f"  {tag['rank']:>4}  {tag['score']:+.4f}{prob}  {tag['label']}")
        for warning in result.get("warnings", []):
            print(f"  warning: {warning['label']!r}: {warning['message']}")
    return 1 if any("error" in r for r in results) else 0


def _tag_remote(args: argparse.Namespace, options: dict) -> list[dict] | int:
    """Through the client library, REST or gRPC by the URL's scheme, with its retries."""
    from ml2p_client import Client, ML2PError

    try:
        client = Client(args.url, api_key=args.api_key, verify=args.cacert or True)
    except ValueError as exc:
        return _fail(str(exc))
    results: list[dict] = []
    with client:
        for path in args.images:
            try:
                result = client.tag(path, args.labels, vocabulary=args.vocabulary, **options)
                results.append(result.model_dump(exclude={"source"}))
            except ML2PError as exc:
                results.append({"error": {"code": exc.code, "message": exc.message,
                                          "field": exc.field}})
    return results


async def _tag_local(args: argparse.Namespace, options: dict) -> list[dict] | int:
    from artifact.errors import ArtifactError
    from service.api.schemas import TagResponse
    from service.errors import ServiceError
    from service.pipeline import TagOptions, build_service
    from service.runtime import EngineUnavailable

    overrides = {name: getattr(args, name) for name in LOCAL_SETTINGS
                 if getattr(args, name) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        return _fail(invalid_settings(exc))
    try:
        service = build_service(settings)
    except (ArtifactError, EngineUnavailable) as exc:
        return _fail(str(exc))
    await service.start()
    if not await service.wait_ready():
        return _fail(service.failure or "model not ready")
    results = []
    for path in args.images:
        try:
            outcome = await service.tag([Path(path).read_bytes()], args.labels or None,
                                        args.vocabulary, TagOptions(**options))
            results.append(TagResponse.of(outcome, "local").model_dump())
        except ServiceError as exc:
            results.append({"error": exc.to_dict()})
    await service.close()
    return results


# the settings `ml2p tag` runs a local model with (the rest from ML2P_* or their defaults)
LOCAL_SETTINGS = ("model", "engine", "precision", "vocab_dir")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `serve` and `tag` on the `ml2p` parser."""
    serve = sub.add_parser("serve", help="run the REST + gRPC server",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    tag = sub.add_parser("tag", help="tag images with a local model or a running server",
                         description="Rank labels for images, with the model in-process or "
                                     "through a running server (--url).")
    tag.add_argument("images", nargs="+", metavar="IMAGE")
    tag.add_argument("--labels", nargs="+", metavar="LABEL", help="candidate labels")
    tag.add_argument("--vocabulary", help="a stored vocabulary name instead of --labels")
    tag.add_argument("--top-k", type=int)
    tag.add_argument("--min-probability", type=float,
                     help="keep tags whose calibrated probability is at least this (0-1)")
    tag.add_argument("--min-score", type=float, help="keep tags whose raw score is at least this")
    tag.add_argument("--json", action="store_true", help="one JSON object per image")
    remote = tag.add_argument_group("a running server")
    remote.add_argument("--url", help="http(s)://host:port (REST) or grpc(s)://host:port "
                                      "(default: run the model in-process)")
    remote.add_argument("--api-key", default=os.environ.get("ML2P_API_KEY") or None,
                        help="the server's key (default: $ML2P_API_KEY)")
    remote.add_argument("--cacert", help="CA bundle that signed the server's TLS certificate")
    local = tag.add_argument_group("in-process (each also ML2P_<NAME>)")
    for name in LOCAL_SETTINGS:
        field = Settings.model_fields[name]
        choices = get_args(field.annotation) if "Literal" in str(field.annotation) else None
        local.add_argument(f"--{name.replace('_', '-')}", choices=choices or None,
                           help=field.description)
    tag.set_defaults(func=cmd_tag)


def invalid_settings(exc: ValidationError) -> str:
    """One line naming each bad setting by its flag and its environment variable."""
    return "invalid setting: " + "; ".join(
        f"{e['loc'][0]} (--{str(e['loc'][0]).replace('_', '-')} / "
        f"ML2P_{str(e['loc'][0]).upper()}): {e['msg']}" for e in exc.errors())
