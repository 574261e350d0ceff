"""`ml2p bench autoscale`: the committed simulation is of the committed autoscaler, and the
simulated autoscaler follows the Kubernetes algorithm's rules (tolerance, rate policies,
stabilisation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.autoscale_sim import Autoscaler, Cluster, Measured, simulate

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
HPA = REPO / "deploy" / "k8s" / "base" / "hpa.yaml"
ADAPTER = REPO / "deploy" / "k8s" / "prometheus-adapter" / "config.yaml"


def test_the_committed_results_simulate_the_committed_manifests():
    """Change the HPA or the adapter's window and this fails until `ml2p bench autoscale`
    is run again (and its verdict read)."""
    report = json.loads((RESULTS / "autoscale_sim.json").read_text())
    assert report["autoscaler"] == json.loads(json.dumps(Autoscaler.load(HPA, ADAPTER).__dict__))
    assert report["oscillates"] is False
    measured = Measured.load(RESULTS / "serve_compare.json", report["inputs"]["system"])
    assert report["model"]["peak_rps"] == measured.peak_rps


def _cluster(**change: object) -> Cluster:
    hpa = Autoscaler(**{**Autoscaler.load(HPA, ADAPTER).__dict__, **change})
    measured = Measured.load(RESULTS / "serve_compare.json", "rest-int8")
    return Cluster(measured, hpa, queue_size=256, pod_start_s=30.0,
                   rng=np.random.default_rng(0))


def test_scale_up_is_limited_by_the_policies_and_down_by_the_stabilisation_window():
    cluster = _cluster(min_replicas=2, max_replicas=50)
    run = simulate(cluster, [(300.0, 2000.0)])  # far beyond 2 replicas: wants ~25 at once
    first = run["scale_events"][0]
    # Percent 100 / Pods 4 per 30 s, selectPolicy Max: from 2, at most +4 in the first 30 s
    assert first["change"] == 4
    replicas = {row["t"]: row["replicas"] for row in run["timeline"]}
    for event in run["scale_events"]:
        before = replicas.get(event["t"] - 15, cluster.hpa.min_replicas)
        assert event["change"] <= max(4, before), (event, before)  # doubling at most
    cluster = _cluster()
    settle = simulate(cluster, [(900.0, 400.0)])
    assert settle["scale_events"][-1]["t"] < 600, "no change in the last 300 s of 400 req/s"
    quiet = simulate(cluster, [(285.0, 20.0)])
    # the load fell at 900 s: no scale-down before the 300 s window has passed
    assert quiet["scale_events"] == []
    quiet = simulate(cluster, [(200.0, 20.0)])
    downs = quiet["scale_events"]
    assert downs and all(e["change"] == -1 for e in downs)  # one pod a minute
    assert all(b["t"] - a["t"] >= 60 for a, b in zip(downs, downs[1:], strict=False))


def test_within_the_tolerance_nothing_moves():
    """A load that keeps CPU within 10 % of the target on the minimum replicas: no event."""
    cluster = _cluster(queue_target=None)
    hpa, m = cluster.hpa, cluster.m
    per_replica = hpa.cpu_target / (m.cpu_at_peak / m.cores) * m.peak_rps
    run = simulate(cluster, [(600.0, per_replica * hpa.min_replicas)])
    assert run["scale_events"] == []
