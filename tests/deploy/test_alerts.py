"""docker/alerts.yml and docker/prometheus.yml through the real `promtool`.

`promtool check config` / `check rules` validate the files; `promtool test rules` runs the
fixtures of alerts_test.yml (start-up, drain, failed load, dead replica, full queue) against
the rules. Each fault the rules once had is put back into a copy of the rules, and the same
fixtures must then fail: the fixtures catch a broken rule, they do not just run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_support import REPO

PROMTOOL = shutil.which("promtool")
RULES = REPO / "docker" / "alerts.yml"
FIXTURES = Path(__file__).with_name("alerts_test.yml")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="no `promtool` on PATH (Debian package `prometheus`; .ci/run "
    "installs it)")


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_promtool_checks_the_config_and_rules():
    for args in (("check", "rules", RULES), ("check", "config", REPO / "docker" /
                                                "prometheus.yml")):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_fixtures_pass():
    result = promtool("test", "rules", FIXTURES)
    assert result.returncode == 0, result.stdout + result.stderr


# (what is broken, text in the current rules, what it is replaced with, fixture that catches it)
FAULTS = [
    ("failed /readyz probes counted as errors but not as requests",
     'endpoint!~"/livez|/readyz|/metrics", status=~', "status=~", "failed load"),
    ("queue threshold hard-coded instead of the replica's capacity",
     "avg_over_time(ml2p_queue_depth[5m]) / ml2p_queue_capacity) > 0.8",
     "avg_over_time(ml2p_queue_depth[5m])) > 200", "full queue"),
    ("a dead replica only as up == 0 (its series goes stale instead)",
     '(last_over_time(ml2p_ready{job=~"ml2p-tagger|ml2p-tagger-gpu"}[10m]) == 1)\n'
     "            unless on (job, instance) (up == 1)",
     'up{job="ml2p-tagger"} == 0', "dead replica"),
    ("readiness not watched (a replica whose model failed to load counts as up)",
     'ml2p_ready{job=~"ml2p-tagger|ml2p-tagger-gpu"} == 0', 'up{job="ml2p-tagger"} == 0',
     "failed load"),
    ("the drain pages as a dead replica",
     "last_over_time(ml2p_ready", "max_over_time(up", "drain"),
]


@pytest.mark.parametrize("fault, current, broken, fixture", FAULTS, ids=[f[0] for f in FAULTS])
def test_fixtures_fail_on_a_broken_rule(tmp_path, fault, current, broken, fixture):
    text = RULES.read_text()
    assert current in text, f"the rules no longer contain {current!r}: update this test"
    (tmp_path / "docker").mkdir()
    (tmp_path / "tests" / "deploy").mkdir(parents=True)
    (tmp_path / "docker" / "alerts.yml").write_text(text.replace(current, broken))
    shutil.copy(FIXTURES, tmp_path / "tests" / "deploy" / FIXTURES.name)
    assert promtool("check", "rules", tmp_path / "docker" / "alerts.yml").returncode == 0, \
        "the broken rule should still be valid PromQL"
    result = promtool("test", "rules", tmp_path / "tests" / "deploy" / FIXTURES.name)
    assert result.returncode != 0, f"the fixtures pass with {fault}"
    assert f"name: {fixture}," in result.stdout + result.stderr, result.stdout
