"""The CPU image built and run for real: docker-compose.yml brought up with podman-compose.

Builds the Debian base (docker/base/build.sh, reused while the script is unchanged), the
tagger image (docker/Dockerfile) and the Debian Prometheus image (docker/prometheus/) with
docker/build_images.py, then `podman-compose up` of the tagger and Prometheus (Grafana's
image cannot be had here) on free host ports, and checks through the published ports: the
health check turns healthy, a photo is tagged over REST and gRPC with the API key (and
refused without), Prometheus scrapes ml2p_request_duration_seconds from the container and
every Grafana panel query returns series (`promtool query instant`), the server runs as a
non-root user in an image without torch, a compiler, pip or the build's pip settings, and
SIGTERM under load drains: exit code 0, every request sent before the signal answered 200.

Skips only when no container engine can run here, saying why. Podman reads
docker/containers.conf (runc, no default ulimits) unless CONTAINERS_CONF is set.
ML2P_CONTAINER_REPORT=<file> writes the measured build and start times, image sizes and
largest layers there as JSON (benchmarks/results/container.json is made that way).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from deploy_support import LABELS, REPO
from server_harness import pb, pb_grpc  # on the path through tests/deploy/conftest.py

from artifact.testing import free_port, image_bytes

PROMTOOL = shutil.which("promtool")
TAGGER, PROMETHEUS = "ml2p-tagger:latest", "ml2p-prometheus:latest"  # the compose file's tag
PHOTOS = REPO.parent / "shared" / "data" / "voc2007" / "images" / "val"
BUILD_TIMEOUT_S = 2400
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 600)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(REPO / "docker" / "containers.conf"))
    return env


def _run(*args: str, timeout: float = 120, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                            env=env or _env(), cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])}... exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _why_no_engine() -> str | None:
    """Why containers cannot run here, or None when Podman runs one."""
    if shutil.which("podman") is None:
        return "podman is not installed (.ci/run installs podman and runc)"
    try:
        import podman_compose  # noqa: F401
    except ImportError:
        return "podman-compose is not installed (the dev extra has it)"
    if shutil.which("mmdebstrap") is None and not os.environ.get("ML2P_BASE_IMAGE"):
        return "mmdebstrap is not installed and no ML2P_BASE_IMAGE is given"
    info = _run("podman", "info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-500:]}"
    return None


def _compose(project: str, env: dict[str, str], *args: str,
             timeout: float = 300) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-m", "podman_compose", "-p", project, *args, env=env,
                timeout=timeout)


def _image_report(tag: str) -> dict:
    size = int(_run("podman", "image", "inspect", "--format", "{{.Size}}", tag).stdout)
    history = json.loads(_run("podman", "history", "--format", "json", tag).stdout)
    sized = sorted(((layer["size"], layer["CreatedBy"][:160]) for layer in history),
                   reverse=True)
    return {"size_mb": round(size / 1e6, 1),
            "largest_layers": [{"mb": round(b / 1e6, 1), "created_by": c}
                               for b, c in sized[:5]]}


_SIZES = (
    "import os, site, sys\n"
    "def size(top):\n"
    "    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(top) for f in fs"
    " if not os.path.islink(os.path.join(d, f)))\n"
    "dirs = [os.path.join(p, n) for p in site.getsitepackages() if os.path.isdir(p)"
    " for n in os.listdir(p)]\n"
    "dirs += [os.path.join(sys.argv[1], n) for n in os.listdir(sys.argv[1])]\n"
    "for d in dirs: print(size(d) if os.path.isdir(d) else os.path.getsize(d), d)\n"
)


def _largest_in_image(count: int = 12) -> dict[str, float]:
    """The biggest site-packages entries and artifact files of the tagger image, in MB."""
    out = _run("podman", "run", "--rm", "--entrypoint", "python", TAGGER, "-c", _SIZES,
               "/app/models/zoo/default").stdout.splitlines()
    sizes = sorted(((int(n), path) for n, path in (line.split(" ", 1) for line in out)),
                   reverse=True)
    return {path: round(n / 1e6, 1) for n, path in sizes[:count]}


def _photo() -> tuple[bytes, str]:
    if PHOTOS.is_dir():
        first = sorted(PHOTOS.glob("*.jpg"))[0]
        return first.read_bytes(), first.name
    try:
        from PIL import Image
        from skimage import data
    except ImportError:
        return image_bytes(), "a generated test image (no VOC photos or scikit-image here)"
    import io

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG")
    return buffer.getvalue(), "scikit-image's chelsea.png (a cat)"


@pytest.fixture(scope="module")
def stack():
    why = _why_no_engine()
    if why:
        pytest.skip(f"no container engine can run: {why}")
    report: dict = {"command": "ML2P_CONTAINER_REPORT=<file> pytest tests/deploy/test_container.py"}
    started = time.monotonic()
    build = [sys.executable, str(REPO / "docker" / "build_images.py"), "--tag", TAGGER,
             "--prometheus-tag", PROMETHEUS]
    if os.environ.get("ML2P_BASE_IMAGE"):
        build += ["--base", os.environ["ML2P_BASE_IMAGE"]]
    # torch's index: ML2P_TORCH_INDEX_URL, read by build_images.py ('' where the pip
    # configuration has torch, as .ci/run sets it)
    built = _run(*build, timeout=BUILD_TIMEOUT_S)
    report["build_s"] = json.loads(built.stdout.splitlines()[-1])
    report["images"] = {tag: _image_report(tag) for tag in (TAGGER, PROMETHEUS)}
    report["images"][TAGGER]["largest_in_image_mb"] = _largest_in_image()

    project = f"ml2ptest{os.getpid()}"
    key = secrets.token_hex(16)
    ports = {"TAGGER_HTTP_PORTS": free_port(), "TAGGER_GRPC_PORTS": free_port(),
             "PROMETHEUS_PORT": free_port()}
    env = {**_env(), **{k: str(v) for k, v in ports.items()}, "ML2P_API_KEY": key,
           "PROMETHEUS_IMAGE": PROMETHEUS, "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(8)}
    up_started = time.monotonic()
    try:
        # Grafana is left out: its image is on a registry this machine cannot reach
        _compose(project, env, "up", "-d", "--no-build", "tagger", "prometheus")
        container = _run("podman", "ps", "-q", "--filter", f"label=io.podman.compose.project="
                         f"{project}", "--filter", "label=com.docker.compose.service=tagger"
                         ).stdout.split()[0]
        yield {"project": project, "env": env, "key": key, "container": container,
               "http": f"http://127.0.0.1:{ports['TAGGER_HTTP_PORTS']}",
               "grpc": f"127.0.0.1:{ports['TAGGER_GRPC_PORTS']}",
               "prometheus": f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}",
               "report": report, "up_started": up_started}
    finally:
        _run(sys.executable, "-m", "podman_compose", "-p", project, "down", "-v",
             env=env, timeout=300, check=False)
        report["test_wall_s"] = round(time.monotonic() - started, 1)
        target = os.environ.get("ML2P_CONTAINER_REPORT")
        if target:
            Path(target).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))


def _health(container: str) -> str:
    return _run("podman", "inspect", "--format", "{{.State.Health.Status}}", container,
                check=False).stdout.strip()


@pytest.fixture(scope="module")
def healthy(stack):
    """Runs the compose health check (podman has no timer without systemd, so the test
    triggers each check the way the timer would) until the container is healthy."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        _run("podman", "healthcheck", "run", stack["container"], check=False)
        if _health(stack["container"]) == "healthy":
            stack["report"]["stack_start_to_healthy_s"] = round(
                time.monotonic() - stack["up_started"], 1)
            return stack
        time.sleep(1)
    logs = _run("podman", "logs", stack["container"], check=False)
    raise AssertionError(f"not healthy after 180 s: {_health(stack['container'])}\n"
                         f"{logs.stdout[-3000:]}{logs.stderr[-3000:]}")


def test_health_check_turns_healthy_and_readyz_answers(healthy):
    assert _health(healthy["container"]) == "healthy"
    assert httpx.get(f"{healthy['http']}/readyz", timeout=10).status_code == 200


def _tag_rest(stack, photo: bytes, headers: dict | None = None,
              data: dict | None = None) -> httpx.Response:
    return httpx.post(f"{stack['http']}/v1/tag", timeout=60,
                      headers={"Authorization": f"Bearer {stack['key']}"}
                      if headers is None else headers,
                      files={"image": ("photo.jpg", photo, "image/jpeg")},
                      data=data or {"labels": [*LABELS, "person", "bicycle"]})


def test_tags_a_photo_over_rest_and_grpc_through_the_published_ports(healthy):
    import grpc

    photo, name = _photo()
    print(f"photo: {name}")
    assert _tag_rest(healthy, photo, headers={}).status_code == 401
    rest = _tag_rest(healthy, photo)
    assert rest.status_code == 200, rest.text
    rest_tags = [(t["label"], t["score"]) for t in rest.json()["tags"]]
    with grpc.insecure_channel(healthy["grpc"]) as channel:
        reply = pb_grpc.TaggerStub(channel).Tag(
            pb.TagRequest(image=photo, labels=LABELS + ["person", "bicycle"]), timeout=60,
            metadata=(("authorization", f"Bearer {healthy['key']}"),))
    grpc_tags = [(t.label, t.score) for t in reply.tags]
    assert rest_tags and [t for t, _ in rest_tags] == [t for t, _ in grpc_tags]
    for (_, a), (_, b) in zip(rest_tags, grpc_tags, strict=True):
        assert abs(a - b) < 1e-4
    # one request past its deadline: a 5xx for the error panels and the error-ratio alert
    late = _tag_rest(healthy, photo, data={"labels": "cat", "timeout_ms": "1"})
    assert late.status_code == 504, late.text


def test_runs_as_non_root_without_torch_compiler_or_build_settings(healthy):
    uid = _run("podman", "exec", healthy["container"], "python", "-c",
               "import os; print(os.getuid())").stdout.strip()
    assert uid == "10001", uid
    top = _run("podman", "top", healthy["container"], "user", "args").stdout
    assert "ml2p serve" in top and "root" not in top, top
    probe = ("import importlib.util, shutil, os; "
             "print(importlib.util.find_spec('torch') is None, "
             "[c for c in ('gcc', 'cc', 'c++', 'clang', 'pip', 'make') if shutil.which(c)], "
             "[p for p in ('/etc/pip.conf', '/etc/xdg/pip', '/opt/wheels', '/opt/pypi') "
             "if os.path.exists(p)])")
    out = _run("podman", "run", "--rm", "--entrypoint", "python", TAGGER, "-c", probe).stdout
    assert out.strip() == "True [] []", out
    history = _run("podman", "history", "--no-trunc", "--format", "{{.CreatedBy}}",
                   TAGGER).stdout
    assert "pip.conf" not in history and "/opt/wheels" not in history


def _promql(url: str, expr: str) -> list:
    result = _run(PROMTOOL, "query", "instant", "-o", "json", url, expr, timeout=30)
    return json.loads(result.stdout or "[]")


def test_prometheus_scrapes_the_container_and_every_panel_has_series(healthy):
    if PROMTOOL is None:
        pytest.skip("no promtool (Debian package prometheus)")
    url = healthy["prometheus"]
    photo, _ = _photo()
    for _ in range(3):
        assert _tag_rest(healthy, photo).status_code == 200
    dashboard = json.loads((REPO / "docker" / "grafana" / "dashboards" / "ml2p.json")
                           .read_text())
    counter = 'sum(ml2p_request_duration_seconds_count{job="ml2p-tagger", endpoint="/v1/tag"})'
    deadline = time.monotonic() + 90
    while not _promql(url, counter):
        assert time.monotonic() < deadline, "Prometheus never scraped the tagger container"
        time.sleep(2)
    # every panel query, as Grafana sends it ($__rate_interval at least 4 scrape intervals)
    pending = [(p["title"], t["expr"].replace("$__rate_interval", "1m"))
               for p in dashboard["panels"] for t in p["targets"]]
    overload_only = [expr for _, expr in pending if 'status=~"429|RESOURCE_EXHAUSTED"' in expr]
    missing: list[str] = []
    for title, expr in pending:
        if expr in overload_only:
            continue  # nothing here is overloaded: no 429 series exists to show
        while not _promql(url, expr):
            if time.monotonic() > deadline:
                missing.append(f"{title}: {expr}")
                break
            time.sleep(2)
    assert not missing, missing
    rules = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
    # the lifecycle API is off
    assert httpx.post(f"{url}/-/quit", timeout=10).status_code != 200


def test_sigterm_under_load_drains_and_exits_0(healthy):
    """Four clients send back to back; `podman stop` (SIGTERM, 35 s before SIGKILL as in
    the compose file) while they do. Every request sent before the signal gets 200; later
    ones may be refused (503) or find the port closed; the container exits 0."""
    photo, _ = _photo()
    stop = threading.Event()
    calls: list[tuple[float, float, object]] = []  # (sent, ended, status or error name)
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status: object = http.post(
                        f"{healthy['http']}/v1/tag", files={"image": ("p.jpg", photo)},
                        headers={"Authorization": f"Bearer {healthy['key']}"},
                        data={"labels": LABELS}).status_code
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                with lock:
                    calls.append((sent, time.monotonic(), status))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    signalled = time.monotonic()
    stopped = _run("podman", "stop", "-t", "35", healthy["container"], timeout=60,
                   check=False)
    took = time.monotonic() - signalled
    stop.set()
    for thread in threads:
        thread.join(60)
    code = _run("podman", "inspect", "--format", "{{.State.ExitCode}}",
                healthy["container"]).stdout.strip()
    logs = _run("podman", "logs", healthy["container"], check=False)
    assert stopped.returncode == 0 and code == "0", (code, logs.stderr[-3000:])
    before = [c for c in calls if c[0] < signalled]
    after = [c for c in calls if c[0] >= signalled]
    assert before and all(status == 200 for _, _, status in before), before
    assert any(ended > signalled for _, ended, _ in before), "no request was in flight"
    assert all(status in (200, 503) or isinstance(status, str) for _, _, status in after)
    assert '"msg": "stopped"' in logs.stdout + logs.stderr
    healthy["report"]["sigterm_to_exit_s"] = round(took, 2)
    healthy["report"]["requests_before_signal"] = len(before)
    report = healthy["report"]
    assert took < 35, report


def test_compose_file_is_what_ran(stack):
    """The stack above came from the repository's compose file, not a copy."""
    config = yaml.safe_load(_compose(stack["project"], stack["env"], "config").stdout)
    assert config["services"]["tagger"]["image"] == TAGGER
    assert config["services"]["prometheus"]["image"] == PROMETHEUS
