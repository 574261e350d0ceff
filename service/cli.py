"""`ml2p`: the single command-line entry point.

Serving side: `serve`, `tag`, `bench serve`. Training side (`data`, `train`, `eval`, `export`,
...) is added by `models.cli.add_commands` when `models` is importable (the `train` extra);
nothing from `models` or torch is imported otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import get_args

from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per setting; unset flags fall back to `ML2P_*` and then the default."""
    group = parser.add_argument_group("settings (each also ML2P_<NAME>)")
    for name, field in Settings.model_fields.items():
        choices = get_args(field.annotation) if "Literal" in str(field.annotation) else None
        default = field.default.get_secret_value() if hasattr(field.default, "get_secret_value") \
            else field.default
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"setting_{name}", default=None,
                           choices=choices or None, metavar=None if choices else "VALUE",
                           help=f"{field.description or ''} (default: {default})")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    flags = {k.removeprefix("setting_"): v for k, v in vars(args).items()
             if k.startswith("setting_") and v is not None}
    return Settings(**flags)


def _fail(message: str, code: int = 2) -> int:
    print(f"ml2p: error: {message}", file=sys.stderr)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    from service.errors import ArtifactError
    from service.logs import configure_logging
    from service.runtime import EngineUnavailable
    from service.server import build_service, serve

    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format)
    try:
        service = build_service(settings)
    except (ArtifactError, EngineUnavailable) as exc:
        return _fail(f"cannot start: {exc}")
    try:
        return asyncio.run(serve(settings, service))
    except OSError as exc:
        return _fail(f"cannot start: {exc}")


def cmd_tag(args: argparse.Namespace) -> int:
    if bool(args.labels) == bool(args.vocabulary):
        return _fail("give --labels or --vocabulary (exactly one)")
    options = {"top_k": args.top_k, "threshold": args.threshold}
    if args.url:
        results = [_tag_remote(args, path, options) for path in args.images]
    else:
        results = asyncio.run(_tag_local(args, options))
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
    return 1 if any("error" in r for r in results) else 0


def _tag_remote(args: argparse.Namespace, path: str, options: dict) -> dict:
    import httpx

    key = settings_from(args).api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    data = {k: str(v) for k, v in options.items() if v is not None}
    if args.vocabulary:
        data["vocabulary"] = args.vocabulary
    else:
        data["labels"] = json.dumps(args.labels)
    with open(path, "rb") as handle:
        response = httpx.post(f"{args.url.rstrip('/')}/v1/tag", data=data, headers=headers,
                              files={"image": (Path(path).name, handle)}, timeout=60)
    return response.json()


async def _tag_local(args: argparse.Namespace, options: dict) -> list[dict] | int:
    from service.api.schemas import TagResponse
    from service.engine import TagOptions
    from service.errors import ArtifactError, ServiceError
    from service.runtime import EngineUnavailable
    from service.server import build_service

    settings = settings_from(args)
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


def bench_module(name: str):  # noqa: ANN201 - a module
    """benchmarks/NAME.py as a module (benchmarks/ is a folder of scripts, not a package),
    loaded once per process; None outside a source checkout."""
    key = f"ml2p_benchmarks_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, REPO / "benchmarks" / f"{name}.py")
    if spec is None or spec.loader is None or not spec.origin or not Path(spec.origin).exists():
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # before running it: dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def _run_bench(name: str, args: argparse.Namespace) -> int:
    module = bench_module(name)
    if module is None:
        return _fail(f"benchmarks/{name}.py not found (run from a source checkout)")
    return module.run(args)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    return _run_bench("serve_bench", args)


def cmd_bench_serve_compare(args: argparse.Namespace) -> int:
    return _run_bench("serve_compare", args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml2p", description="ML2P zero-shot image tagger")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the REST + gRPC server",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    tag = sub.add_parser("tag", help="tag images with a local model or a running server")
    tag.add_argument("images", nargs="+", metavar="IMAGE")
    tag.add_argument("--labels", nargs="+", metavar="LABEL", help="candidate labels")
    tag.add_argument("--vocabulary", help="a stored vocabulary name instead of --labels")
    tag.add_argument("--top-k", type=int)
    tag.add_argument("--threshold", type=float)
    tag.add_argument("--url", help="server base URL (default: run the model in-process)")
    tag.add_argument("--json", action="store_true", help="one JSON object per image")
    _settings_flags(tag)
    tag.set_defaults(func=cmd_tag)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    bench_serve = bench_sub.add_parser("serve", help="REST / gRPC / in-process throughput + "
                                       "latency at several concurrencies")
    _add_bench_serve_args(bench_serve)
    bench_serve.set_defaults(func=cmd_bench_serve)
    compare = bench_sub.add_parser("serve-compare", help="the service beside the raw pipeline, "
                                   "a naive FastAPI server and Triton (pytriton), one run")
    _add_bench_serve_compare_args(compare)
    compare.set_defaults(func=cmd_bench_serve_compare)

    _add_training_commands(sub, bench_sub)
    return parser


def _add_bench_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="artifact dir (default: ML2P_MODEL, else a tiny "
                                        "generated test model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--max-requests", type=int, default=2000, help="cap per point")
    parser.add_argument("--labels", type=int, default=20, help="candidate labels per request")
    parser.add_argument("--protocols", nargs="+", default=["raw", "rest", "grpc"],
                        choices=["raw", "rest", "grpc"])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve.json"))
    parser.add_argument("--note", default="", help="context recorded with the results")


def _numbers(text: str) -> list[float]:
    """'20,40,60' -> [20.0, 40.0, 60.0]"""
    return [float(part) for part in text.split(",") if part.strip()]


def _add_bench_serve_compare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="artifact dir (default: ML2P_MODEL, else a tiny "
                                        "generated test model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    parser.add_argument("--max-requests", type=int, default=2000, help="cap per point")
    parser.add_argument("--labels", type=int, default=20, help="candidate labels per request")
    parser.add_argument("--systems", nargs="+", default=["raw", "rest", "grpc", "naive", "triton"],
                        choices=["raw", "rest", "grpc", "naive", "triton"])
    parser.add_argument("--open-loop-rates", nargs="+", type=_numbers, metavar="RPS",
                        help="open-loop offered rates in req/s, the same for every system "
                             "(comma or space separated); instead of --open-loop-fractions")
    parser.add_argument("--open-loop-fractions", nargs="*", type=_numbers, metavar="F",
                        default=[[0.5, 0.9, 1.2]],
                        help="open-loop offered rates as fractions of the raw pipeline's "
                             "closed-loop peak in this run, the same req/s for every system "
                             "(default 0.5,0.9,1.2; given with no value: no open loop)")
    parser.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson",
                        help="open-loop inter-arrival times")
    parser.add_argument("--seed", type=int, default=0, help="open-loop arrival schedule seed")
    parser.add_argument("--max-in-flight", type=int, default=256,
                        help="open-loop cap on outstanding requests (over it: dropped)")
    parser.add_argument("--extras", action="store_true",
                        help="also label scaling (1-10,000 labels) and image decoding (0.3-12 MP)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                             "serve_compare.json"))
    parser.add_argument("--note", default="", help="context recorded with the results")


def _add_training_commands(sub: argparse._SubParsersAction,
                           bench_sub: argparse._SubParsersAction) -> None:
    """`models.cli.add_commands(sub[, bench=bench_sub])` when the training side is installed."""
    try:
        from models import cli as models_cli
    except ImportError:
        return
    add = models_cli.add_commands
    if "bench" in inspect.signature(add).parameters:
        add(sub, bench=bench_sub)
    else:
        add(sub)


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except ValidationError as exc:  # a bad flag or ML2P_* value
        problems = "; ".join(
            f"{e['loc'][0]} (--{str(e['loc'][0]).replace('_', '-')} / "
            f"ML2P_{str(e['loc'][0]).upper()}): {e['msg']}" for e in exc.errors())
        return _fail(f"invalid setting: {problems}")
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
