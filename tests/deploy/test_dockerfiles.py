"""docker/Dockerfile and docker/Dockerfile.gpu against the repository (no Docker needed).

Every command a RUN line gives to `ml2p`, `python -m` or `make` must exist here; COPY sources
must exist and survive .dockerignore; ENV names must be settings; the health check must pass
against a real server; the serving stage must stay free of torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_support import (
    REPO,
    URL_PATHS,
    Dockerfile,
    dockerignore_excludes,
    make_targets,
    module_in_repo,
    parse_dockerfile,
    parse_env,
    shell_commands,
)

from artifact.testing import free_port
from ml2p_cli import build_parser
from service.settings import Settings

CPU, GPU = "docker/Dockerfile", "docker/Dockerfile.gpu"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PREFIX = Settings.model_config["env_prefix"]


@pytest.fixture(params=[CPU, GPU], scope="module")
def dockerfile(request) -> Dockerfile:
    return parse_dockerfile(REPO / request.param)


def ml2p_commands() -> set[str]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def runtime_env(dockerfile: Dockerfile) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in dockerfile.of("ENV", "runtime"):
        env |= parse_env(instruction.value)
    return env


def runtime_settings(dockerfile: Dockerfile, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in runtime_env(dockerfile).items():
        if key.startswith(PREFIX):
            monkeypatch.setenv(key, value)
    return Settings()


def test_stages(dockerfile):
    """Both stages of both images on the one BASE_IMAGE argument (default: the official
    Python image, the Python the serving lock is made on); docker/base/build.sh makes the
    registry-less equivalent."""
    assert [name for _, name in dockerfile.stages] == ["builder", "runtime"]
    assert [image for image, _ in dockerfile.stages] == ["python:3.11-slim"] * 2
    (arg,) = [i.value for i in dockerfile.instructions if i.value.startswith("BASE_IMAGE=")]
    assert arg == "BASE_IMAGE=python:3.11-slim"


def _parses(argv: list[str], subcommands: set[str]) -> None:
    """`ml2p ARGV` is a command with options the real CLI parser accepts."""
    assert argv and argv[0] in subcommands, f"`ml2p {' '.join(argv)}`: no such command"
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`ml2p {' '.join(argv)}`: the CLI rejects these arguments")


def _check_command(cmd: list[str], seen: list[tuple[str, str]], subcommands: set[str],
                   targets: set[str]) -> None:
    """One simple command of a RUN line, or of a recipe that `make` would run for one."""
    prog = Path(cmd[0]).name
    if prog == "ml2p":
        _parses(cmd[1:], subcommands)
    elif re.fullmatch(r"python3?(\.\d+)?", prog) and "-m" in cmd:
        module = cmd[cmd.index("-m") + 1]
        assert module_in_repo(module) or importlib.util.find_spec(module), \
            f"`python -m {module}`: no such module"
        if module == "ml2p_cli":
            _parses(cmd[cmd.index("-m") + 2:], subcommands)
        seen.append(("python -m", module))
    elif prog == "make":
        goals = [a for a in cmd[1:] if not a.startswith("-") and "=" not in a]
        missing = [g for g in goals if g not in targets]
        assert not missing, f"`{' '.join(cmd)}`: no Makefile target {missing}"
        for goal in goals:
            seen.append(("make", goal))
            _check_make_recipe(goal, seen, subcommands, targets)


def _check_make_recipe(goal: str, seen: list[tuple[str, str]], subcommands: set[str],
                       targets: set[str]) -> None:
    """What `make GOAL` runs in the image (python on PATH, no .venv): every prerequisite is
    there or buildable, every command exists, every repository file it names is in the
    build context."""
    dry = subprocess.run(["make", "-n", "-B", "PYTHON=python", goal], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, f"`make {goal}` cannot run here: {dry.stderr.strip()}"
    for line in dry.stdout.replace("\\\n", " ").splitlines():
        for cmd in shell_commands(line):
            _check_command(cmd, seen, subcommands, targets)
            for previous, token in zip(cmd, cmd[1:], strict=False):
                path = token.split("=", 1)[-1]
                if previous == "--out" or token.startswith("--out="):
                    continue  # written by the command, not read from the build context
                if "/" in path and not path.startswith("/") and (REPO / path).exists():
                    assert not dockerignore_excludes(REPO / ".dockerignore", path), \
                        f"`make {goal}` reads {path}, which .dockerignore leaves out"


def test_run_commands_refer_to_real_things(dockerfile):
    subcommands, targets = ml2p_commands(), make_targets(REPO / "Makefile")
    seen: list[tuple[str, str]] = []
    for run in dockerfile.of("RUN"):
        for cmd in shell_commands(run.value):
            _check_command(cmd, seen, subcommands, targets)
    # the builder makes the artifact exactly as `make model` does, and the client wheel that
    # carries the gRPC stubs
    assert ("make", "model") in seen and ("make", "client") in seen


def test_entrypoint_is_ml2p_serve(dockerfile):
    (entry,) = dockerfile.of("ENTRYPOINT")
    assert json.loads(entry.value) == ["ml2p", "serve"]
    assert PYPROJECT["project"]["scripts"]["ml2p"] == "ml2p_cli:main"
    _parses(["serve"], ml2p_commands())


def test_torch_only_in_the_builder(dockerfile):
    """torch (the `train` extra, read from pyproject.toml) goes into the builder's /opt/train;
    the runtime stage installs nothing: it copies the serving venv and the artifact."""
    builder_runs = " ".join(i.value for i in dockerfile.of("RUN", "builder"))
    assert "['project']['optional-dependencies']['train']" in builder_runs
    assert "/opt/train/bin/pip install" in builder_runs
    assert '${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}' in builder_runs
    (index,) = [i.value for i in dockerfile.of("ARG", "builder")
                if i.value.startswith("TORCH_INDEX_URL=")]
    assert index == "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
    assert "/opt/venv/bin/pip install --no-deps ." in builder_runs
    assert "torch" not in " ".join(i.value for i in dockerfile.of("COPY", "runtime"))
    runtime_runs = " ".join(i.value for i in dockerfile.of("RUN", "runtime"))
    assert "pip" not in runtime_runs and "torch" not in runtime_runs
    assert not [i for i in dockerfile.of("ARG", "runtime") if i.value.startswith("PIP_")], \
        "package-index settings must stay in the builder stage"


def test_runtime_user_is_not_root(dockerfile):
    users = dockerfile.of("USER", "runtime")
    assert users and users[-1].value not in {"root", "0", "0:0"}


def test_exposed_ports_are_the_settings_defaults(dockerfile, monkeypatch):
    (expose,) = dockerfile.of("EXPOSE")
    settings = runtime_settings(dockerfile, monkeypatch)
    assert {int(p) for p in expose.value.split()} == {settings.http_port, settings.grpc_port}
    fields = Settings.model_fields
    assert (settings.http_port, settings.grpc_port) == (fields["http_port"].default,
                                                        fields["grpc_port"].default)


def test_env_names_are_settings_and_paths_are_in_the_image(dockerfile, monkeypatch):
    env = runtime_env(dockerfile)
    unknown = [k for k in env if k.startswith(PREFIX)
               and k[len(PREFIX):].lower() not in Settings.model_fields]
    assert not unknown, unknown
    settings = runtime_settings(dockerfile, monkeypatch)  # validates every value
    assert settings.host == "0.0.0.0"
    copies = {line.value.split()[-1] for line in dockerfile.of("COPY", "runtime")}
    workdir = dockerfile.of("WORKDIR", "runtime")[-1].value
    copied = {c if c.startswith("/") else f"{workdir}/{c.removeprefix('./')}" for c in copies}
    assert str(settings.model) in copied, "ML2P_MODEL is not where the artifact is copied"
    volumes = " ".join(v.value for v in dockerfile.of("VOLUME"))
    assert str(settings.vocab_dir) in volumes
    if settings.engine == "onnxruntime-gpu":
        assert str(settings.trt_cache_dir) in volumes


def _builder_outputs() -> set[str]:
    """Paths the builder stage creates: the artifact (`make model`) and the client wheel
    with the stubs (`make client`)."""
    match = re.search(r"^ML2P_MODEL\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert match, "Makefile sets no ML2P_MODEL default"
    assert Path(match[1]) == Settings.model_fields["model"].default
    return {match[1], "dist"}


def test_copy_sources_exist_and_are_in_the_context(dockerfile):
    ignore = REPO / ".dockerignore"
    builder_dir = dockerfile.of("WORKDIR", "builder")[-1].value.rstrip("/")
    for line in dockerfile.of("COPY"):
        args = line.value.split()
        origin = next((a.split("=", 1)[1] for a in args if a.startswith("--from=")), None)
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:
            if origin is None:
                rel = source.removeprefix("./") or "."
            elif not source.startswith(builder_dir + "/"):  # made by the builder's RUNs
                assert origin == "builder", line
                runs = " ".join(i.value for i in dockerfile.of("RUN", "builder"))
                made = source in runs or (source in ("/etc/passwd", "/etc/group")
                                          and "useradd " in runs)
                assert made, f"{line}: no builder step makes {source}"
                continue
            else:
                assert origin == "builder" and source.startswith(builder_dir + "/"), line
                rel = source[len(builder_dir) + 1:]
            if rel in _builder_outputs():
                continue
            assert (REPO / rel).exists(), f"COPY {source}: {rel} is not in the repository"
            if rel != ".":
                assert not dockerignore_excludes(ignore, rel), f"{rel} is .dockerignored"


def test_dockerignore_keeps_sources_and_drops_local_builds():
    ignore = REPO / ".dockerignore"
    tracked = subprocess.run(["git", "ls-files", "pyproject.toml", "Makefile", "ml2p_cli.py",
                              "artifact", "service", "benchmarks", "clients",
                              "models", "proto"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert "pyproject.toml" in tracked and "proto/tagger.proto" in tracked
    dropped = [p for p in tracked if dockerignore_excludes(ignore, p)]
    assert not dropped, f"needed by the builder but .dockerignored: {dropped}"
    for local in (".venv/bin/python", ".git/HEAD", "dist/ml2p_client-0.1.0-py3-none-any.whl",
                  "clients/python/ml2p_client/_generated/tagger_pb2.py",
                  "models/zoo/default/visual.onnx", "service/__pycache__/cli.cpython-311.pyc"):
        assert dockerignore_excludes(ignore, local), f"{local} would enter the build context"


def _health_command(dockerfile: Dockerfile) -> list[str]:
    (check,) = dockerfile.of("HEALTHCHECK")
    _, _, command = check.value.partition("CMD ")
    return json.loads(command)


def test_healthcheck_hits_readyz_and_works(dockerfile, live):
    command = _health_command(dockerfile)
    assert command[0] == "python"
    assert URL_PATHS.findall(" ".join(command)) == ["/readyz"] and "/readyz" in live.routes
    run = [sys.executable, *command[1:]]
    ok = subprocess.run(run, env={"ML2P_HTTP_PORT": str(live.server.http_port)}, timeout=30)
    assert ok.returncode == 0
    down = subprocess.run(run, env={"ML2P_HTTP_PORT": str(free_port())}, timeout=30,
                          capture_output=True)
    assert down.returncode != 0


def test_gpu_image_is_marked_not_run_and_uses_the_gpu_engine():
    text = (REPO / GPU).read_text()
    assert "NOT BUILT OR RUN BY THIS PROJECT" in text
    assert "python3.1" not in text, "the Python comes from BASE_IMAGE, no version in paths"
    for pin in ("ARG ONNXRUNTIME_GPU=", "ARG TENSORRT_LIBS="):
        (line,) = [x for x in text.splitlines() if x.startswith(pin)]
        assert line.count(".") >= 2, f"{line}: not an exact version"
    gpu = parse_dockerfile(REPO / GPU)
    assert runtime_env(gpu)["ML2P_ENGINE"] == "onnxruntime-gpu"
    assert "onnxruntime-gpu[cuda,cudnn]==" in " ".join(i.value for i in gpu.of("RUN", "builder"))
    assert "not run here" in (REPO / "docs" / "deploy.md").read_text().lower()
