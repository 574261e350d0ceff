"""`ml2p`: the one command-line entry point.

A thin module over the packages' own commands: `serve` and `tag` (`service.cli`), `data`,
`train`, `eval` and `export` (`models.cli`, when the training side is installed) and `bench
NAME` (`benchmarks.COMMANDS`, each benchmark module's own `main`, imported only when run). It
is the one module allowed to import every package (tests/test_layout.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys


def build_parser() -> argparse.ArgumentParser:
    from service import cli as service_cli

    parser = argparse.ArgumentParser(prog="ml2p", description="ML2P zero-shot image tagger")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service_cli.add_commands(sub)
    try:  # the training side is an extra: serving images do not have it
        from models import cli as models_cli
    except ImportError:
        pass
    else:
        models_cli.add_commands(sub)
    try:
        from benchmarks import COMMANDS
    except ImportError:
        return parser
    bench = sub.add_parser("bench", help="benchmarks (`ml2p bench NAME --help`)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="NAME")
    for name, (module, help_text) in COMMANDS.items():
        # the benchmark parses its own flags: everything after NAME goes to its main()
        bench_sub.add_parser(name, help=help_text, add_help=False).set_defaults(
            func=None, bench_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from service.cli import invalid_settings

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "bench_module", None):
        result = importlib.import_module(args.bench_module).main(rest)
        return result if isinstance(result, int) else 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        result = args.func(args)
    except ValidationError as exc:  # a bad flag or ML2P_* value
        print(f"ml2p: error: {invalid_settings(exc)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
