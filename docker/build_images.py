"""Build the CPU tagger image and the Debian Prometheus image with Podman (or Docker).

    python3 docker/build_images.py                    # Debian base from docker/base/build.sh
    python3 docker/build_images.py --base python:3.11-slim --engine docker

The machine's pip configuration reaches the builder stage read-only and is never copied into
a layer: with Podman every pip configuration file and every local path it names (CA bundle,
local wheel folders, file:// indexes, constraints) is bind-mounted (`-v ...:ro`) during the
build; PIP_INDEX_URL / PIP_EXTRA_INDEX_URL from the environment go in as builder-stage
build arguments. Prints one JSON object: the image tags and each build's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIP_FILES = ["/etc/pip.conf", "/etc/xdg/pip", str(Path.home() / ".config" / "pip"),
             str(Path.home() / ".pip"), os.environ.get("PIP_CONFIG_FILE", "")]
PIP_PATH_KEYS = ("cert", "client-cert", "find-links", "index-url", "extra-index-url",
                 "constraint", "requirement")


def pip_mounts() -> list[str]:
    """`-v PATH:PATH:ro` for the pip configuration files and the local paths they name."""
    paths = {p for p in PIP_FILES if p and os.path.exists(p)}
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True).stdout.splitlines()
    values = [line.split("=", 1)[1].strip("'\"") for line in listed
              if "=" in line and line.split("=", 1)[0].rsplit(".", 1)[-1] in PIP_PATH_KEYS]
    values += [os.environ.get(f"PIP_{k.upper().replace('-', '_')}", "") for k in PIP_PATH_KEYS]
    for value in values:
        for item in value.split():
            path = item.removeprefix("file://").rstrip("/")
            if item.startswith("file://") and path.endswith("/simple"):
                path = path.removesuffix("/simple")  # its pages link to files beside it
            if path.startswith("/") and os.path.exists(path):
                paths.add(path)
    # a mounted directory covers what lies under it (and mounts must not nest)
    kept = [p for p in sorted(paths) if not any(p.startswith(q + "/") for q in paths)]
    return [arg for p in kept for arg in ("-v", f"{p}:{p}:ro")]


def build(engine: str, dockerfile: str, tag: str, base: str, context: Path,
          extra: list[str]) -> float:
    args = [engine, "build", "-f", dockerfile, "-t", tag, "--build-arg", f"BASE_IMAGE={base}"]
    if engine == "podman":
        # docker format keeps HEALTHCHECK and STOPSIGNAL (the OCI format drops HEALTHCHECK);
        # host network: the build reaches the package index the way this machine does
        args += ["--format", "docker", "--network", "host", *pip_mounts()]
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        if os.environ.get(name):
            args += ["--build-arg", f"{name}={os.environ[name]}"]
    start = time.monotonic()
    subprocess.run([*args, *extra, str(context)], check=True, stdout=sys.stderr)
    return round(time.monotonic() - start, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="podman", choices=["podman", "docker"])
    parser.add_argument("--base", help="base image (default: docker/base/build.sh's)")
    parser.add_argument("--tag", default="ml2p-tagger:latest")
    parser.add_argument("--prometheus-tag", default="ml2p-prometheus:latest")
    parser.add_argument("--torch-index-url", default=os.environ.get("ML2P_TORCH_INDEX_URL"),
                        help="torch's wheel index (default: $ML2P_TORCH_INDEX_URL, else the "
                        "Dockerfile's, the PyTorch CPU index; '' when the pip configuration's "
                        "index has torch)")
    args = parser.parse_args(argv)
    times: dict[str, float] = {}
    base = args.base
    if base is None:
        start = time.monotonic()
        base = subprocess.run([str(REPO / "docker" / "base" / "build.sh")], check=True,
                              capture_output=True, text=True,
                              env={**os.environ, "ENGINE": args.engine}).stdout.strip()
        times["base_s"] = round(time.monotonic() - start, 1)
    extra = [] if args.torch_index_url is None else [
        "--build-arg", f"TORCH_INDEX_URL={args.torch_index_url}"]
    times["tagger_s"] = build(args.engine, "docker/Dockerfile", args.tag, base, REPO, extra)
    times["prometheus_s"] = build(args.engine, "docker/prometheus/Dockerfile",
                                  args.prometheus_tag, base, REPO / "docker" / "prometheus", [])
    print(json.dumps({"base": base, "tagger": args.tag, "prometheus": args.prometheus_tag,
                      **times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
