"""`ml2p bench autoscale`: how many replicas a request rate needs, and what the
HorizontalPodAutoscaler of deploy/k8s does under a step in load, by simulation.

Nothing here is measured anew and no cluster is involved. The inputs are committed files:
- `benchmarks/results/serve_compare.json` (`ml2p bench serve-compare`): the CPU engine's
  (`rest-int8`) closed-loop peak throughput on this 2-core machine, its single-request latency
  percentiles (the service-time shape), its CPU use at the peak, and its open-loop latencies
  (the sizing table);
- `deploy/k8s/base/hpa.yaml` (targets, replica bounds, behaviour) and
  `deploy/k8s/prometheus-adapter/config.yaml` (the queue metric's averaging window).

The model: a replica is `cores` parallel servers with a FIFO queue of `ML2P_MAX_QUEUE_SIZE`
(429 beyond), service times log-normal with the single-request p50/p99 spread, scaled so that
a replica's capacity is the measured peak. Requests arrive as a Poisson process and go to a
uniformly random ready replica (kube-proxy). Every 15 s (the HPA's sync period, also the
ServiceMonitor's scrape interval) the autoscaler reads CPU (busy fraction x the measured CPU at
the peak, averaged over 30 s, as metrics-server would) and the queue depth (scraped every 15 s,
averaged over the adapter's window), and applies the Kubernetes algorithm: per metric
ceil(ready x current / target) with a 10 % tolerance, not-yet-ready pods counted as idle when
scaling up, the larger of the metrics, then the behaviour's stabilisation windows and rate
policies. A new pod takes `--pod-start-s` to become ready (an assumption: image cached on the
node; the container itself was measured healthy in about 3 s by tests/deploy).

Oscillation check: under a constant load, after the first scale-up has settled, the replica
count must not go down and then up again (or up and then down).
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from benchmarks import command_main, write_report

REPO = Path(__file__).resolve().parents[1]
SYNC_S = 15.0       # HPA sync period = scrape interval
CPU_WINDOW_S = 30.0  # metrics-server's CPU rate window (assumed)
TOLERANCE = 0.1     # the HPA's default tolerance


# ---------------------------------------------------------------------------------- inputs
@dataclass
class Measured:
    """What the simulation takes from serve_compare.json (CPU engine, `rest-int8`)."""

    cores: int
    peak_rps: float
    cpu_at_peak: float
    p50_c1_ms: float
    p99_c1_ms: float
    open_loop: list[dict]
    command: str

    @classmethod
    def load(cls, path: Path, system: str) -> Measured:
        data = json.loads(path.read_text())
        rows = [r for r in data["results"] if r["system"] == system]
        peak = max(rows, key=lambda r: r["throughput_rps"])
        single = next(r for r in rows if r["concurrency"] == 1)
        return cls(cores=data["machine"]["cpus"], peak_rps=peak["throughput_rps"],
                   cpu_at_peak=peak["server_cpu_cores"], p50_c1_ms=single["p50_ms"],
                   p99_c1_ms=single["p99_ms"],
                   open_loop=[r for r in data["open_loop"]["results"] if r["system"] == system],
                   command=data["command"])

    def service_time(self) -> tuple[float, float]:
        """(mu, sigma) of the log-normal service time in seconds: sigma from the p50/p99
        spread of single requests, mu so that `cores` servers serve the measured peak."""
        sigma = math.log(self.p99_c1_ms / self.p50_c1_ms) / 2.326  # z of the 99th percentile
        return math.log(self.cores / self.peak_rps) - sigma ** 2 / 2, sigma


@dataclass
class Autoscaler:
    """The HorizontalPodAutoscaler's settings, read from the manifest."""

    min_replicas: int
    max_replicas: int
    cpu_target: float | None      # utilisation fraction of the CPU request
    queue_target: float | None    # images waiting, average per pod
    queue_window_s: float
    up_window_s: float
    down_window_s: float
    up_policies: list[dict]
    up_select: str
    down_policies: list[dict]
    down_select: str
    name: str

    @classmethod
    def load(cls, hpa_path: Path, adapter_path: Path) -> Autoscaler:
        spec = yaml.safe_load(hpa_path.read_text())["spec"]
        cpu = queue = None
        for metric in spec["metrics"]:
            if metric["type"] == "Resource" and metric["resource"]["name"] == "cpu":
                cpu = metric["resource"]["target"]["averageUtilization"] / 100
            elif metric["type"] == "Pods":
                queue = float(metric["pods"]["target"]["averageValue"])
        rule = yaml.safe_load(adapter_path.read_text())["rules"][0]
        window = re.search(r"\[(\d+)([sm])\]", rule["metricsQuery"])
        up, down = spec["behavior"]["scaleUp"], spec["behavior"]["scaleDown"]
        return cls(spec["minReplicas"], spec["maxReplicas"], cpu, queue,
                   int(window[1]) * (60 if window[2] == "m" else 1),
                   up["stabilizationWindowSeconds"], down["stabilizationWindowSeconds"],
                   up["policies"], up.get("selectPolicy", "Max"), down["policies"],
                   down.get("selectPolicy", "Max"), _shown(str(hpa_path)))


# ------------------------------------------------------------------------------- the model
@dataclass
class Replica:
    ready_at: float
    servers: list[float]
    waiting: collections.deque = field(default_factory=collections.deque)  # start times
    busy_s: collections.deque = field(default_factory=collections.deque)   # (t, seconds)
    depth_samples: collections.deque = field(default_factory=collections.deque)


class Cluster:
    """Replicas, the random balancer and the autoscaler, advanced 15 s at a time."""

    def __init__(self, measured: Measured, hpa: Autoscaler, queue_size: int, pod_start_s: float,
                 rng: np.random.Generator) -> None:
        self.m, self.hpa, self.queue_size, self.pod_start_s = measured, hpa, queue_size, pod_start_s
        self.rng = rng
        self.mu, self.sigma = measured.service_time()
        self.replicas = [self._replica(-1e9) for _ in range(hpa.min_replicas)]
        self.events: list[tuple[float, int]] = []            # (time, +n / -n)
        self.recommendations: list[tuple[float, int]] = []   # (time, desired)
        self.now = 0.0

    def _replica(self, now: float) -> Replica:
        return Replica(ready_at=now + self.pod_start_s, servers=[now] * self.m.cores)

    def serve(self, t0: float, t1: float, rate: float) -> tuple[np.ndarray, int]:
        """Poisson arrivals in [t0, t1): latencies (s) of the answered, count refused."""
        n = self.rng.poisson(rate * (t1 - t0))
        arrivals = np.sort(self.rng.uniform(t0, t1, n))
        ready = [r for r in self.replicas if r.ready_at <= t0]
        picks = self.rng.integers(0, len(ready), n)
        services = self.rng.lognormal(self.mu, self.sigma, n)
        latencies, refused = np.empty(n), 0
        answered = 0
        for t, k, s in zip(arrivals.tolist(), picks.tolist(), services.tolist(), strict=True):
            r = ready[k]
            waiting = r.waiting
            while waiting and waiting[0] <= t:
                waiting.popleft()
            if len(waiting) >= self.queue_size:
                refused += 1
                continue
            start = max(t, r.servers[0])
            heapq.heapreplace(r.servers, start + s)
            if start > t:
                waiting.append(start)
            r.busy_s.append((start, s))
            latencies[answered] = start + s - t
            answered += 1
        for r in ready:  # the scrape at t1
            while r.waiting and r.waiting[0] <= t1:
                r.waiting.popleft()
            r.depth_samples.append((t1, len(r.waiting)))
        return latencies[:answered], refused

    def _metrics(self, now: float) -> tuple[list[float], list[float]]:
        """Per ready pod: CPU utilisation of its request, mean queue depth over the window."""
        cpu, depth = [], []
        busy_to_cpu = self.m.cpu_at_peak / self.m.cores
        for r in self.replicas:
            if r.ready_at > now:
                continue
            while r.busy_s and r.busy_s[0][0] < now - CPU_WINDOW_S:
                r.busy_s.popleft()
            while r.depth_samples and r.depth_samples[0][0] <= now - self.hpa.queue_window_s:
                r.depth_samples.popleft()
            busy = sum(s for _, s in r.busy_s)
            cpu.append(busy / (CPU_WINDOW_S * self.m.cores) * busy_to_cpu)
            depth.append(float(np.mean([d for _, d in r.depth_samples]))
                         if r.depth_samples else 0.0)
        return cpu, depth

    def autoscale(self, now: float) -> None:
        """One HPA sync: recommendation, stabilisation, rate policies, then act."""
        hpa, current = self.hpa, len(self.replicas)
        cpu, depth = self._metrics(now)
        ready = len(cpu)
        desired = 0
        for values, target in ((cpu, hpa.cpu_target), (depth, hpa.queue_target)):
            if target is None or not values:
                continue
            ratio = float(np.mean(values)) / target
            if abs(ratio - 1) <= TOLERANCE:
                proposal = current
            else:
                proposal = math.ceil(ratio * ready)
                if proposal > current and ready < current:
                    # not-ready pods count as idle when scaling up (damps start-up overshoot)
                    ratio = sum(values) / current / target
                    proposal = current if abs(ratio - 1) <= TOLERANCE else math.ceil(
                        ratio * current)
            desired = max(desired, proposal)
        desired = max(hpa.min_replicas, min(hpa.max_replicas, desired or current))
        self.recommendations.append((now, desired))
        self.recommendations = [(t, d) for t, d in self.recommendations
                                if t > now - max(hpa.up_window_s, hpa.down_window_s, 1)]
        def within(window: float) -> list[int]:  # this sync's and the window's
            return [d for t, d in self.recommendations if t > now - window or t == now]

        if desired > current:  # the lowest recommendation of the window, at most the limit
            desired = min(min(within(hpa.up_window_s)),
                          self._limit(now, current, hpa.up_policies, hpa.up_select, +1))
        elif desired < current:  # the highest of the window, at least the limit
            desired = max(max(within(hpa.down_window_s)),
                          self._limit(now, current, hpa.down_policies, hpa.down_select, -1))
        if desired > current:
            self.replicas += [self._replica(now) for _ in range(desired - current)]
            self.events.append((now, desired - current))
        elif desired < current:
            # the newest go first (their queues drain; they get no new requests)
            self.replicas = sorted(self.replicas, key=lambda r: r.ready_at)[:desired]
            self.events.append((now, desired - current))

    def _limit(self, now: float, current: int, policies: list[dict], select: str,
               sign: int) -> int:
        limits = []
        for policy in policies:
            changed = sum(n for t, n in self.events
                          if t > now - policy["periodSeconds"] and n * sign > 0)
            start = current - changed
            if policy["type"] == "Pods":
                limits.append(start + sign * policy["value"])
            else:
                step = start * policy["value"] / 100
                limits.append(math.ceil(start + step) if sign > 0 else math.floor(start - step))
        pick = max if (select == "Max") == (sign > 0) else min
        return pick(limits)


# ------------------------------------------------------------------------------- scenarios
def simulate(cluster: Cluster, profile: list[tuple[float, float]]) -> dict:
    """Run a load profile [(seconds, req/s), ...] from the cluster's clock on; a timeline per
    15 s and totals."""
    timeline, now = [], cluster.now
    latencies, refused_total = [], 0
    for seconds, rate in profile:
        end = now + seconds
        while now < end - 1e-9:
            lat, refused = cluster.serve(now, now + SYNC_S, rate)
            now += SYNC_S
            cluster.autoscale(now)
            cluster.now = now
            latencies.append(lat)
            refused_total += refused
            timeline.append({"t": now, "rate": rate, "replicas": len(cluster.replicas),
                             "ready": sum(r.ready_at <= now for r in cluster.replicas),
                             "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1)
                             if len(lat) else None, "refused": refused})
    every = np.concatenate(latencies) if latencies else np.empty(0)
    return {"timeline": timeline, "answered": int(every.size), "refused": refused_total,
            "p50_ms": round(float(np.percentile(every, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(every, 99)) * 1000, 1),
            "scale_events": [{"t": t, "change": n} for t, n in cluster.events
                             if t > timeline[0]["t"] - SYNC_S]}


def reversals(events: list[dict], after: float) -> int:
    """Direction changes of the replica count after `after` s (up then down or down then up)."""
    signs = [1 if e["change"] > 0 else -1 for e in events if e["t"] > after]
    return sum(a != b for a, b in zip(signs, signs[1:], strict=False))


def segment(run: dict, t0: float, t1: float) -> dict:
    rows = [r for r in run["timeline"] if t0 < r["t"] <= t1]
    return {"replicas_max": max(r["replicas"] for r in rows),
            "replicas_end": rows[-1]["replicas"],
            "refused": sum(r["refused"] for r in rows),
            "p99_ms_worst_15s": max(r["p99_ms"] or 0 for r in rows)}


def _shown(path: str) -> str:
    """A path as a results file names it: relative to the repository when inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    measured = Measured.load(Path(args.measured), args.system)
    hpa = Autoscaler.load(Path(args.hpa), Path(args.adapter))
    mu, sigma = measured.service_time()

    def cluster(seed: int, config: Autoscaler = hpa, replicas: int | None = None) -> Cluster:
        c = Cluster(measured, config, args.queue_size, args.pod_start_s,
                    np.random.default_rng(seed))
        if replicas is not None:
            c.replicas = [c._replica(-1e9) for _ in range(replicas)]
        return c

    # the model against the measurement: one replica, no autoscaler, the open-loop rates
    fixed = Autoscaler(**{**hpa.__dict__, "cpu_target": None, "queue_target": None,
                          "min_replicas": 1, "max_replicas": 1})
    check = []
    for row in measured.open_loop:
        sim = simulate(cluster(0, fixed, 1), [(120.0, row["scheduled_rps"])])
        check.append({"rate_rps": row["scheduled_rps"], "measured_p99_ms": row["p99_ms"],
                      "measured_shed": row["rejected"], "simulated_p99_ms": sim["p99_ms"],
                      "simulated_refused": sim["refused"]})

    low, high = args.step
    step = simulate(cluster(1), [(600.0, low), (1200.0, high), (1200.0, low)])
    steady = []
    for rate in args.steady:
        sim = simulate(cluster(2), [(1800.0, rate)])
        settled = segment(sim, 600.0, 1800.0)
        steady.append({"rate_rps": rate, "replicas_end": sim["timeline"][-1]["replicas"],
                       "replicas_max": segment(sim, 0.0, 1800.0)["replicas_max"],
                       "reversals_after_600s": reversals(sim["scale_events"], 600.0),
                       "scale_events": len(sim["scale_events"]),
                       "settled_refused": settled["refused"],
                       "settled_p99_ms_worst_15s": settled["p99_ms_worst_15s"]})
    # the same step under other settings, for contrast
    variants = {
        "queue target 8": {"queue_target": 8.0},
        "no scale-down stabilisation or rate limit": {
            "down_window_s": 0,
            "down_policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
    }
    contrast = []
    for name, change in variants.items():
        sim = simulate(cluster(1, Autoscaler(**{**hpa.__dict__, **change, "name": name})),
                       [(600.0, low), (1200.0, high), (1200.0, low)])
        contrast.append({"variant": name, "change": change,
                         "reversals": reversals(sim["scale_events"], 0),
                         "scale_events": len(sim["scale_events"]),
                         "high": segment(sim, 600, 1800), "refused": sim["refused"]})

    sizing = []
    for target in args.p99_targets:
        ok = [r for r in measured.open_loop if r["p99_ms"] <= target and not r["rejected"]
              and not r.get("dropped")]
        per_replica = max((r["scheduled_rps"] for r in ok), default=None)
        sizing.append({"p99_target_ms": target, "per_replica_rps": per_replica,
                       "per_core_rps": round(per_replica / measured.cores, 1)
                       if per_replica else None,
                       "replicas": {str(rate): math.ceil(rate / per_replica)
                                    if per_replica else None for rate in args.rates}})
    report = {
        "benchmark": "autoscale", "command": " ".join(["ml2p bench autoscale", *args.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": {"measured": _shown(args.measured), "measured_command": measured.command,
                   "system": args.system, "hpa": _shown(args.hpa),
                   "adapter": _shown(args.adapter)},
        "model": {"cores": measured.cores, "peak_rps": measured.peak_rps,
                  "cpu_at_peak": measured.cpu_at_peak,
                  "service_time_lognormal": {"mu": round(mu, 4), "sigma": round(sigma, 4),
                                             "mean_ms": round(math.exp(mu + sigma ** 2 / 2)
                                                              * 1000, 2)},
                  "queue_size": args.queue_size, "pod_start_s": args.pod_start_s,
                  "sync_s": SYNC_S, "cpu_window_s": CPU_WINDOW_S,
                  "queue_window_s": hpa.queue_window_s},
        "autoscaler": hpa.__dict__, "model_check": check, "sizing": sizing,
        "step": {"low_rps": low, "high_rps": high, **{k: step[k] for k in (
            "answered", "refused", "p50_ms", "p99_ms", "scale_events")},
            "before": segment(step, 0, 600), "high": segment(step, 600, 1800),
            "after": segment(step, 1800, 3000),
            "reversals": reversals(step["scale_events"], 0),
            "timeline": step["timeline"]},
        "step_variants": contrast,
        "steady": steady,
        "oscillates": any(s["reversals_after_600s"] for s in steady) or reversals(
            step["scale_events"], 0) > 2,
        "run_s": round(time.perf_counter() - started, 1),
    }
    return write_report(Path(args.out), report, markdown)


def markdown(r: dict) -> str:
    m, a, s = r["model"], r["autoscaler"], r["step"]
    lines = [f"# Autoscaling simulation ({r['created']})", "",
             f"Command: `{r['command']}` ({r['run_s']} s). A simulation, not a cluster: no "
             "Kubernetes ran. Inputs: `" + r["inputs"]["measured"] + "` (from `"
             + r["inputs"]["measured_command"] + f"`, system `{r['inputs']['system']}`), "
             f"`{r['inputs']['hpa']}`, `{r['inputs']['adapter']}`.", "",
             f"Model: a replica = {m['cores']} cores (the measured machine), capacity "
             f"{m['peak_rps']} req/s (measured peak), CPU {m['cpu_at_peak']} cores at the peak; "
             f"service time log-normal, mean {m['service_time_lognormal']['mean_ms']} ms, "
             f"sigma {m['service_time_lognormal']['sigma']} (the single-request p50/p99 spread); "
             f"queue {m['queue_size']} per replica; random balancing; a new pod ready after "
             f"{m['pod_start_s']} s (assumed); HPA every {m['sync_s']:g} s on CPU averaged over "
             f"{m['cpu_window_s']:g} s and the queue over {m['queue_window_s']:g} s.", "",
             f"Autoscaler (`{a['name']}`): {a['min_replicas']}-{a['max_replicas']} replicas, "
             f"CPU target {a['cpu_target']:.0%}, queue target {a['queue_target']:g} per pod, "
             f"scale-up window {a['up_window_s']} s, scale-down window {a['down_window_s']} s.",
             "", "## The model against the measurement (one replica, open loop)", "",
             "| req/s | measured p99 ms | measured shed | simulated p99 ms | simulated refused |",
             "|---:|---:|---:|---:|---:|"]
    for c in r["model_check"]:
        lines.append(f"| {c['rate_rps']} | {c['measured_p99_ms']} | {c['measured_shed']} | "
                     f"{c['simulated_p99_ms']} | {c['simulated_refused']} |")
    rates = list(r["sizing"][0]["replicas"])
    lines += ["", "## Sizing (measured open-loop latency per replica)", "",
              "| p99 target | req/s per replica | per core | "
              + " | ".join(f"replicas for {x} req/s" for x in rates) + " |",
              "|---:|---:|---:|" + "---:|" * len(rates)]
    for z in r["sizing"]:
        lines.append(f"| {z['p99_target_ms']} ms | {z['per_replica_rps']} | "
                     f"{z['per_core_rps']} | "
                     + " | ".join(str(z["replicas"][x]) for x in rates) + " |")
    lines += ["", f"## A step {s['low_rps']} → {s['high_rps']} → {s['low_rps']} req/s "
              "(600 s, 1200 s, 1200 s)", "",
              "| phase | replicas (max) | replicas at the end | refused (429) "
              "| worst 15 s p99 ms |",
              "|---|---:|---:|---:|---:|"]
    for phase in ("before", "high", "after"):
        p = s[phase]
        lines.append(f"| {phase} | {p['replicas_max']} | {p['replicas_end']} | {p['refused']} "
                     f"| {p['p99_ms_worst_15s']} |")
    events = ", ".join(f"{e['t']:g} s: {e['change']:+d}" for e in s["scale_events"])
    lines += ["", f"Scale events: {events}. Direction changes: {s['reversals']}. Over the "
              f"whole step: {s['answered']} answered, {s['refused']} refused, p50 "
              f"{s['p50_ms']} ms, p99 {s['p99_ms']} ms.", "",
              "The same step with one setting changed:", "",
              "| variant | replicas (max) at 400 req/s | refused | scale events | direction "
              "changes |", "|---|---:|---:|---:|---:|",
              f"| as in the manifest | {s['high']['replicas_max']} | {s['refused']} | "
              f"{len(s['scale_events'])} | {s['reversals']} |"]
    for v in r["step_variants"]:
        lines.append(f"| {v['variant']} | {v['high']['replicas_max']} | {v['refused']} | "
                     f"{v['scale_events']} | {v['reversals']} |")
    lines += ["", "## Constant load (1800 s each): does it settle?", "",
              f"Each starts at {a['min_replicas']} replicas under the full load (the worst "
              "case); latency and refusals are for the settled part (600-1800 s).", "",
              "| req/s | replicas (max) | replicas at the end | scale events | direction "
              "changes after 600 s | refused after 600 s | worst 15 s p99 ms after 600 s |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for st in r["steady"]:
        lines.append(f"| {st['rate_rps']} | {st['replicas_max']} | {st['replicas_end']} | "
                     f"{st['scale_events']} | {st['reversals_after_600s']} | "
                     f"{st['settled_refused']} | {st['settled_p99_ms_worst_15s']} |")
    lines += ["", f"**Oscillates: {'yes' if r['oscillates'] else 'no'}** (a direction change "
              "after settling under constant load, or more than two in the step)."]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ml2p bench autoscale`."""
    results = REPO / "benchmarks" / "results"
    parser.add_argument("--measured", default=str(results / "serve_compare.json"))
    parser.add_argument("--system", default="rest-int8",
                        help="the serve-compare system to model (the CPU default: int8)")
    parser.add_argument("--hpa", default=str(REPO / "deploy" / "k8s" / "base" / "hpa.yaml"))
    parser.add_argument("--adapter", default=str(REPO / "deploy" / "k8s" / "prometheus-adapter"
                                                 / "config.yaml"))
    parser.add_argument("--queue-size", type=int, default=256, help="ML2P_MAX_QUEUE_SIZE")
    parser.add_argument("--pod-start-s", type=float, default=30.0,
                        help="assumed seconds from a scale-up to the new pod ready")
    parser.add_argument("--step", type=float, nargs=2, default=[100.0, 400.0],
                        metavar=("LOW", "HIGH"))
    parser.add_argument("--steady", type=float, nargs="+", default=[150.0, 300.0, 450.0])
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 500, 1000, 5000])
    parser.add_argument("--p99-targets", type=float, nargs="+", default=[100.0, 250.0])
    parser.add_argument("--out", default=str(results / "autoscale_sim.json"))


def main(argv: list[str] | None = None) -> int:
    return command_main("autoscale", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
