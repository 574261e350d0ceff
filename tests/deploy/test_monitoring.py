"""Alert rules and the Grafana dashboard use only what a real server exposes.

Metric names, label names and the `endpoint` / `status` / `stage` values in every PromQL
expression are checked against the /metrics exposition of a real `ml2p serve` after REST and
gRPC traffic (and its OpenAPI routes and gRPC methods), not against a list kept here.
"""

from __future__ import annotations

import re

import grpc
import pytest
from deploy_support import parse_promql, regex_alternatives

PROMETHEUS_SERIES = {"up"}        # series Prometheus adds for every scrape target
TARGET_LABELS = {"job", "instance"}  # labels Prometheus attaches to every scraped series
GRPC_STATUSES = {code.name for code in grpc.StatusCode}


def problems_of(expr: str, live, jobs: set[str]) -> list[str]:
    query = parse_promql(expr)
    found, available = [], set(TARGET_LABELS)
    if not query.selectors:
        return [f"no metric in {expr!r}"]
    for selector in query.selectors:
        if selector.metric is None:
            found.append("selector without a metric name")
            continue
        if selector.metric in PROMETHEUS_SERIES:
            labels = set(TARGET_LABELS)
        elif selector.metric in live.samples:
            labels = live.samples[selector.metric] | TARGET_LABELS
        else:
            found.append(f"{selector.metric} is not exposed by the server")
            continue
        available |= labels
        for label, _, value in selector.matchers:
            if label not in labels:
                found.append(f"{selector.metric} has no label {label!r}")
            alternatives = regex_alternatives(value)
            if label == "endpoint":
                found += [f"endpoint {a!r} is no route or gRPC method"
                          for a in alternatives if a not in live.endpoints]
            elif label == "status":
                found += [f"status {a!r} is no HTTP status or gRPC code" for a in alternatives
                          if a not in GRPC_STATUSES
                          and not any(re.fullmatch(a, str(c)) for c in range(100, 600))]
            elif label == "job":
                found += [f"job {a!r} matches no scrape job" for a in alternatives
                          if not any(re.fullmatch(a, job) for job in jobs)]
            elif label in live.label_values and label not in TARGET_LABELS:
                found += [f"{label}={a!r} never exported" for a in alternatives
                          if a not in live.label_values[label]]
    found += [f"grouping by unknown label {g!r}" for g in query.grouping - available]
    return found


@pytest.fixture(scope="module")
def jobs(prometheus_config: dict) -> set[str]:
    return {job["job_name"] for job in prometheus_config["scrape_configs"]}


def rules(alert_rules: dict) -> list[dict]:
    return [rule for group in alert_rules["groups"] for rule in group["rules"]]


def targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(panel["title"], target) for panel in dashboard["panels"]
            for target in panel["targets"]]


def test_alert_rules_use_exposed_metrics(alert_rules, live, jobs):
    for rule in rules(alert_rules):
        problems = problems_of(rule["expr"], live, jobs)
        assert not problems, (rule["alert"], problems)


def _rule_exprs(alert_rules: dict) -> str:
    return "\n".join(rule["expr"] for rule in rules(alert_rules))


def test_alert_rules_cover_errors_latency_and_queue(alert_rules):
    exprs = [parse_promql(rule["expr"]) for rule in rules(alert_rules)]

    def has(metric: str, label: str | None = None, matches: str | None = None) -> bool:
        return any(s.metric == metric and (label is None or any(
            name == label and any(re.fullmatch(alt, matches) for alt in value.split("|"))
            for name, _, value in s.matchers)) for q in exprs for s in q.selectors)

    assert has("ml2p_request_duration_seconds_count", "status", "503"), "no 5xx error rate"
    assert has("ml2p_request_duration_seconds_bucket"), "no latency alert"
    assert "histogram_quantile(0.95" in _rule_exprs(alert_rules).replace(" ", "")
    assert has("ml2p_queue_depth"), "no queue saturation alert"
    for rule in rules(alert_rules):
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule)


def test_dashboard_queries_use_exposed_metrics(dashboard, live, jobs):
    for title, target in targets(dashboard):
        problems = problems_of(target["expr"], live, jobs)
        assert not problems, (title, problems)
        query = parse_promql(target["expr"])
        labels = query.grouping | TARGET_LABELS
        for s in query.selectors:
            labels |= live.samples.get(s.metric, set())
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend <= labels, (title, legend - labels)


def test_dashboard_panels_required(dashboard):
    parsed = [(title, parse_promql(t["expr"]), t["expr"]) for title, t in targets(dashboard)]

    def exprs_with(metric: str) -> list[str]:
        return [e for _, q, e in parsed if any(s.metric == metric for s in q.selectors)]

    requests = exprs_with("ml2p_request_duration_seconds_count")
    assert any("rate(" in e for e in requests), "request rate"
    latency = " ".join(exprs_with("ml2p_request_duration_seconds_bucket"))
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in latency, f"p{quantile} latency"
    assert exprs_with("ml2p_batch_size_bucket") or exprs_with("ml2p_batch_size_sum")
    assert exprs_with("ml2p_queue_depth")
    assert set(exprs_with("ml2p_label_cache_hits_total")) & set(
        exprs_with("ml2p_label_cache_misses_total")), "label cache hit ratio"
    statuses = {value for _, q, _ in parsed for s in q.selectors for label, _, value in
                s.matchers if label == "status"}
    assert any(re.fullmatch(v, "429") for v in statuses), "429 panel"
    assert any(re.fullmatch(v, "500") for v in statuses), "5xx panel"


def test_dashboard_shows_every_exported_family(dashboard, live):
    exprs = " ".join(t["expr"] for _, t in targets(dashboard))
    used = {s.metric for s in parse_promql(exprs.replace("\n", " ")).selectors}
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    missing = [f for f in live.families if f.startswith("ml2p_")
               and not f.endswith("_created")  # creation timestamps of counters/histograms
               and not any(f + suffix in used for suffix in suffixes)]
    assert not missing, f"exported but on no panel: {missing}"


def test_dashboard_layout(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)) and panel["targets"], panel["title"]


@pytest.mark.parametrize("expr, expected", [
    ('sum by (le) (rate(a_bucket{x="1", y=~"b|c"}[5m]))', ({"a_bucket"}, {"le"})),
    ("histogram_quantile(0.9, sum by (job, le) (rate(m[1m]))) > 1", ({"m"}, {"job", "le"})),
    ("sum(rate(a[$__rate_interval])) / (sum(rate(b[1m])) + c)", ({"a", "b", "c"}, set())),
    ('max by (instance) (avg_over_time(q[5m])) > 200 and up{job="x"} == 0',
     ({"q", "up"}, {"instance"})),
])
def test_promql_parser(expr, expected):
    query = parse_promql(expr)
    assert ({s.metric for s in query.selectors}, query.grouping) == expected
