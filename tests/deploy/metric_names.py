"""Which metric names the monitoring config queries, and which ones the server can export.

A Grafana panel whose query names a metric that no server exports shows "No data" and nothing
fails, so the deploy tests compare these sets instead: offline against vLLM's source and the LDA
metrics contract, and live against a running server's /metrics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# The server's own metrics (fixed contract), as they appear in the exposition text. No
# `lda_request_alpha_sum`: prometheus_client leaves `_sum` out of a histogram whose lowest bucket
# is negative, and alpha's buckets start at -1.
LDA_SERIES = frozenset(
    {
        "lda_requests_total",
        "lda_request_alpha_bucket",
        "lda_request_alpha_count",
        "lda_amplified_tokens_total",
        "lda_lora_adapters",
    }
)

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE_OR_SUBQUERY = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Not the tail of a number or duration: `5m`, `1h30m`, `1e3`.
_NAME = re.compile(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
     "group_left", "group_right", "inf", "nan", "atan2", "start", "end"}
)
_TEMPLATE_FUNCTION = re.compile(r"^\s*(label_values|query_result|metrics|label_names)\s*\((.*)\)\s*$", re.S)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (Grafana `$variables` allowed).

    Strips what can hold identifiers that are not metric names (strings, label matchers, range
    and subquery brackets, by/without/on/ignoring label lists, Grafana variables); what is left is
    a metric name unless it is a keyword or is called like a function.
    """
    text = _STRING.sub(" ", expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGE_OR_SUBQUERY.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        name = match.group()
        if name.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def template_query_metric_names(query: str) -> set[str]:
    """Metric names in a Grafana Prometheus variable query (`label_values(metric, label)` etc.)."""
    call = _TEMPLATE_FUNCTION.match(query)
    if call is None:
        return promql_metric_names(query)
    function, args = call.groups()
    if function == "query_result":
        return promql_metric_names(args)
    if function == "label_values" and "," in args:
        return promql_metric_names(args.rsplit(",", 1)[0])
    return set()  # label_values(label), metrics(regex), label_names(): no metric queried


def queried_metric_names(document: Any) -> set[str]:
    """Every metric name queried by a Grafana dashboard or a Prometheus config/rules document.

    Queries are the `expr` strings anywhere in the document (panel targets, alert and recording
    rules) and the queries of Grafana variables of type "query".
    """
    names: set[str] = set()
    if isinstance(document, dict):
        if isinstance(document.get("expr"), str):
            names |= promql_metric_names(document["expr"])
        if document.get("type") == "query" and "name" in document:
            query = document.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            query = query or document.get("definition")
            if isinstance(query, str):
                names |= template_query_metric_names(query)
        for value in document.values():
            if isinstance(value, (dict, list)):
                names |= queried_metric_names(value)
    elif isinstance(document, list):
        for item in document:
            names |= queried_metric_names(item)
    return names


def load_document(path: Path) -> Any:
    """A dashboard (.json) or Prometheus config (.yml/.yaml) as plain Python data."""
    text = Path(path).read_text()
    if Path(path).suffix == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def queried_metric_names_in_files(*paths: Path) -> set[str]:
    names: set[str] = set()
    for path in paths:
        names |= queried_metric_names(load_document(path))
    return names


_VLLM_METRIC = re.compile(r'_(gauge|counter|histogram)_cls\(\s*name="(vllm:[A-Za-z0-9_:]+)"')


def vllm_series_in_source(source: str) -> set[str]:
    """Exposition series of the vLLM metrics defined in `source` (vLLM's v1/metrics modules).

    prometheus_client exposes a counter `x` as `x_total`, and a histogram as `x_bucket`, `x_sum`
    and `x_count`; a gauge keeps its name.
    """
    series = set()
    for kind, name in _VLLM_METRIC.findall(source):
        if kind == "counter":
            series.add(name.removesuffix("_total") + "_total")
        elif kind == "histogram":
            series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            series.add(name)
    return series


def installed_vllm_series() -> set[str] | None:
    """`vllm_series_in_source` over the installed vLLM's v1/metrics package; None without vLLM."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    metrics_dir = Path(spec.submodule_search_locations[0]) / "v1" / "metrics"
    return set().union(*(vllm_series_in_source(p.read_text()) for p in metrics_dir.glob("*.py")))


def exposed_series_names(exposition: str) -> set[str]:
    """Series names in a Prometheus text exposition (the body of GET /metrics)."""
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            match = _IDENTIFIER.match(line)
            if match:
                names.add(match.group())
    return names
