"""The Grafana dashboard's queries against a live metrics endpoint: each panel's PromQL is
parsed for the series it selects and the labels it groups and joins by, and each must be in
what the graph exports (Ray's Prometheus endpoint: Serve's and pdserve's metrics, vLLM's
engine metrics through its Ray stat logger)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
#: Panels whose series only an autoscaling app exports (checked by the autoscaling test).
AUTOSCALING_PANELS = frozenset({"Pool replicas (running / wanted)",
                                "Autoscaling decisions (last 5 min)"})
#: Ray exports a counter from its first increment on; these count failures, so a healthy graph
#: has none yet: their name and labels are checked in the engine's own registry instead.
FIRST_FAILURE_SERIES = {"ray_vllm_nixl_num_failed_transfers_total":
                        "vllm:nixl_num_failed_transfers_total"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def panels(path: Path = DASHBOARD) -> dict[str, list[str]]:
    """Panel title → its query expressions (panels inside collapsed rows too)."""
    found: dict[str, list[str]] = {}

    def walk(items: list[dict]) -> None:
        for panel in items:
            walk(panel.get("panels", []))
            if panel.get("targets"):
                found[panel["title"]] = [t["expr"] for t in panel["targets"]]

    walk(json.loads(path.read_text())["panels"])
    return found


def selected_series(expr: str) -> tuple[set[str], set[str], set[str]]:
    """The metric names an expression selects; the labels it groups or matches by (`by`,
    `on`, ...: every selected series must carry them); the labels a join copies over
    (`group_left`/`group_right`: some selected series must carry them)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    if "$" in text or "__name__" in text:
        raise ValueError(f"a query names its series indirectly; the check cannot: {expr}")
    every: set[str] = set()
    some: set[str] = set()
    for kind, group in GROUPING.findall(text):
        labels = {label.strip() for label in group.split(",") if label.strip()}
        (some if kind.startswith("group_") else every).update(labels)
    text = GROUPING.sub(" ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    names = set()
    for match in re.finditer(r"(?<![0-9.A-Za-z_:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        name, call = match.groups()
        if call is None and name not in KEYWORDS:
            names.add(name)
    return names, every - some - {"le"}, some


def exported(url: str) -> dict[str, set[str]]:
    """Metric sample name → the label names its samples carry, as scraped from `url`."""
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def missing(exprs: list[str], series: dict[str, set[str]],
            engine_series: dict[str, set[str]] | None = None) -> list[str]:
    """What the expressions need and the endpoint lacks (empty: every query has its data)."""
    problems = []
    for expr in exprs:
        names, every, some = selected_series(expr)
        if not names:
            problems.append(f"no series named (in {expr})")
        carried: set[str] = set()
        for name in sorted(names):
            if name in series:
                labels = series[name]
            elif name in FIRST_FAILURE_SERIES and engine_series is not None and (
                    FIRST_FAILURE_SERIES[name] in engine_series):
                # Ray adds its ReplicaId to vLLM's labels
                labels = engine_series[FIRST_FAILURE_SERIES[name]] | {"ReplicaId"}
            else:
                problems.append(f"{name} (in {expr})")
                continue
            carried |= labels
            problems += [f"label {label} on {name} (in {expr})"
                         for label in sorted(every - labels)]
        problems += [f"label {label} (in {expr})" for label in sorted(some - carried)]
    return problems


def wait_for_series(url: str, exprs: list[str], engine_series: dict[str, set[str]] | None = None,
                    timeout_s: float = 90.0) -> list[str]:
    """Scrape until nothing is missing (Ray exports every few seconds) or the timeout; what is
    still missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        problems = missing(exprs, exported(url), engine_series)
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(2)
