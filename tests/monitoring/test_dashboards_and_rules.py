"""manifests/monitoring: every query names a metric someone exports, the rules parse and pass their
unit tests, the PrometheusRule is valid, every alert has a runbook section, the ConfigMap is current.

Where the names come from:
- the gateway: a real scrape of /metrics from a gateway started here, after traffic that makes every
  series appear (prometheus_client prints no sample of a labelled metric before its first use);
- vLLM and Ray Serve: respublica runs vLLM inside Ray Serve LLM (`ray.serve.llm:build_openai_app`),
  which records vLLM's metrics through Ray (`log_engine_metrics`, default true:
  ray/llm/_internal/serve/core/configs/llm_config.py; vllm_engine.py passes
  `vllm.v1.metrics.ray_wrappers.RayPrometheusStatLogger`). Ray sanitizes the name
  (`RayPrometheusMetric._get_sanitized_opentelemetry_name`: `vllm:x` -> `vllm_x`) and its exporter
  prefixes `ray_` (`NAMESPACE` in ray/_private/telemetry/open_telemetry_metric_recorder.py); a counter
  is exported with `_total` (ray/_private/metrics_agent.py), a histogram as `_bucket/_sum/_count`.
  The documented names below are checked against the installed upstream source.
- the operator: a real scrape of its metrics endpoint (operator/metrics.py's `serve`, as
  tests/operator/test_metrics_endpoint.py starts it) after its work queue ran a reconcile that
  failed and the retry that succeeded, so every labelled series has a sample.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from helpers import dashboards_configmap as configmap
from helpers.gateway_harness import (
    ALPHA_KEY,
    TENANTS,
    LoopThread,
    default_routes,
    eventually,
    real_policy,
    start_fake_upstream,
    start_gateway,
    stop_gateway,
)
from helpers.promql import PromQLSyntaxError, grafana_variable_names, metric_names, tokenize
from respublica.operator.metrics import Metrics, serve
from respublica.operator.work_queue import RetryPolicy, WorkQueue
from respublica.serving.gateway.admin_service import AdminService
from respublica.serving.gateway.db import Repository
from respublica.serving.gateway.routing.table import RouteHolder
from respublica.serving.gateway.settings import GatewaySettings
from respublica.serving.gateway.telemetry.budget import BudgetSampler
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics

REPO = configmap.REPO
RULE_FILE = configmap.MONITORING / "prometheusrule.yaml"
RULE_TESTS = Path(__file__).with_name("rules_test.yaml")
RUNBOOKS = REPO / "docs" / "runbooks.md"
PROMETHEUSRULE_CRD = (
    REPO.parent / "shared" / "schemas" / "prometheus-operator" / "monitoring.coreos.com_prometheusrules.yaml"
)

# vLLM's metric names (vllm/v1/metrics/loggers.py, PrometheusStatLogger.__init__) and their kind.
VLLM_METRICS = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:num_preemptions": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
}
# Ray Serve's metric names (before Ray's `ray_` prefix), their kind, and the file that defines them.
RAY_SERVE_METRICS = {
    "serve_deployment_replica_healthy": ("gauge", "deployment_state.py"),
    "serve_deployment_status": ("gauge", "deployment_state.py"),
    "serve_autoscaling_target_replicas": ("gauge", "deployment_state.py"),
    "serve_autoscaling_desired_replicas": ("gauge", "autoscaling_state.py"),
    "serve_num_ongoing_requests_at_replicas": ("gauge", "router.py"),
    "serve_deployment_error_counter": ("counter", "replica.py"),
    "serve_deployment_replica_starts": ("counter", "replica.py"),
}
_SUFFIXES = {"gauge": ("",), "counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
_CLASSES = {"gauge": "Gauge", "counter": "Counter", "histogram": "Histogram"}


def ray_exported(name: str, kind: str) -> set[str]:
    """The sample names Prometheus gets for a metric recorded through Ray's metrics."""
    base = "ray_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return {base + suffix for suffix in _SUFFIXES[kind]}


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed (the engine-cpu extra; scripts/test installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


# --- the tokenizer ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ("rate(http_requests_total[5m])", {"http_requests_total"}),
        ('sum by (model, le) (rate(a_bucket{model=~"m|n", le="2.5"}[$__rate_interval]))', {"a_bucket"}),
        ("sum(rate(a[5m])) by (job) / on (job) group_left(team) b", {"a", "b"}),
        ("a / ignoring(instance) b and without_label", {"a", "b", "without_label"}),
        ("max without (pod) (x) > bool 0 unless y offset 1h30m", {"x", "y"}),
        ('{__name__="by_name", job="j"}', {"by_name"}),
        ('histogram_quantile(0.95, x{l="sum(rate(not_a_metric[5m]))"})', {"x"}),
        ("vllm:num_requests_running + ray_vllm_x:y", {"vllm:num_requests_running", "ray_vllm_x:y"}),
        ("avg_over_time(x[1h:5m]) @ end() # a comment naming z", {"x"}),
        ('count_values("v", a) or topk(3, b) or label_replace(c, "d", "$1", "e", "(.*)")', {"a", "b", "c"}),
        ("absent(gone) * 1e3 + 0x1F - Inf + NaN", {"gone"}),
        ("${datasource_metric}", set()),
        ("1 + 2", set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize("expr", ["sum(rate(x[5m])", 'a{b="c"', "a ? b"])
def test_metric_names_refuses_what_it_can_not_read(expr: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        metric_names(expr)


def test_tokenizer_keeps_strings_whole() -> None:
    kinds = [(t.kind, t.text) for t in tokenize('a{b="x}y", c!~`z`}')]
    assert ("string", '"x}y"') in kinds and ("string", "`z`") in kinds


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("label_values(tenant)", set()),
        ('label_values(m_total{x="y"}, tenant)', {"m_total"}),
        ("query_result(topk(5, sum by (t) (rate(m_total[1h]))))", {"m_total"}),
        ("label_names(m)", {"m"}),
    ],
)
def test_grafana_variable_names(query: str, names: set[str]) -> None:
    assert grafana_variable_names(query) == names


def test_grafana_variable_names_refuses_unknown_functions() -> None:
    with pytest.raises(PromQLSyntaxError):
        grafana_variable_names("metrics(.*)")


# --- what the files query ---------------------------------------------------------------------


def dashboards() -> dict[str, Any]:
    files = configmap.dashboard_files()
    assert len(files) >= 2, "no dashboards found"
    return {path.name: json.loads(path.read_text()) for path in files}


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    return [node["expr"] for node in walk(board.get("panels", [])) if isinstance(node.get("expr"), str)]


def variable_queries(board: dict[str, Any]) -> list[str]:
    out = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def rule_document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(RULE_FILE.read_text())
    return doc


def rules() -> list[dict[str, Any]]:
    found = [rule for group in rule_document()["spec"]["groups"] for rule in group["rules"]]
    assert found, "no rules found"
    return found


def all_queried_names() -> dict[str, set[str]]:
    """Metric name -> where it is queried."""
    where: dict[str, set[str]] = {}
    for name, board in dashboards().items():
        exprs = dashboard_queries(board)
        assert len(exprs) >= 10, f"{name}: only {len(exprs)} queries found"
        for expr in exprs:
            for metric in metric_names(expr):
                where.setdefault(metric, set()).add(name)
        for query in variable_queries(board):
            for metric in grafana_variable_names(query):
                where.setdefault(metric, set()).add(f"{name} (variable)")
    for rule in rules():
        for metric in metric_names(rule["expr"]):
            where.setdefault(metric, set()).add(rule.get("alert") or rule["record"])
    return where


@pytest.fixture(scope="module")
def gateway_exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names of a real gateway's /metrics after traffic that uses every series it has.

    The budget sampler is added as wiring.py adds it, over an admin service that knows alpha's
    daily budget (the test tenants have none), so its labelled gauge has a series."""
    tmp = tmp_path_factory.mktemp("gateway")
    loop = LoopThread()
    try:
        _upstream, runner, upstream_url = loop.run(start_fake_upstream())
        policy = loop.run(real_policy(tmp / "gateway.db"))
        metrics = GatewayMetrics()
        budgeted = {"alpha": dataclasses.replace(TENANTS["alpha"], tokens_per_day=1_000_000)}
        budgets = BudgetSampler(metrics, AdminService(Repository(policy.db), declared=budgeted).spend)
        running = loop.run(
            start_gateway(
                GatewaySettings.model_validate({"telemetry": {"public_metrics": True}}),
                authenticator=policy.authenticator,
                quota_store=policy.quota,
                ledger=policy.ledger,
                routes=RouteHolder(default_routes(upstream_url)),
                metrics=metrics,
                on_startup=[budgets.start],
                on_shutdown=[budgets.stop],
            )
        )
        try:
            client = openai.OpenAI(base_url=running.url + "/v1", api_key=ALPHA_KEY, max_retries=0, timeout=20)
            messages = [{"role": "user", "content": "hello"}]
            client.chat.completions.create(model="m", messages=messages, max_tokens=2)
            list(client.chat.completions.create(model="m", messages=messages, max_tokens=2, stream=True))
            client.chat.completions.create(
                model="m", messages=messages, max_tokens=2, extra_body={"test_prompt_tokens": 100_000}
            )
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="m-waking", messages=messages)
            # The refused one is a metric, not a ledger row.
            eventually(lambda: len(policy.ledger.records) == 3)
            text = httpx.get(running.url + "/metrics", timeout=10).text
        finally:
            loop.run(stop_gateway(running))
            loop.run(runner.cleanup())
            loop.run(policy.db.close())
    finally:
        loop.stop()
    names = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    assert "respublica_gateway_requests_total" in names, "the scrape has no request counter"
    return names


class _FailsOnce:
    """A reconciler whose first run fails (a timeout, as an API call's) and whose retry succeeds."""

    def __init__(self) -> None:
        self.calls = 0

    async def reconcile(self, body: Any, logger: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise TimeoutError("the API server did not answer")

    def forget(self, uid: str) -> None:
        pass


async def _scrape_operator() -> str:
    metrics = Metrics()
    reconciler = _FailsOnce()
    queue = WorkQueue(reconciler, RetryPolicy(base_seconds=0.01), resync_seconds=3600, metrics=metrics)
    runner = await serve(metrics, "127.0.0.1", 0)
    try:
        queue.submit({"metadata": {"uid": "u1", "name": "m", "namespace": "ai"}, "spec": {}})
        for _ in range(500):
            succeeded = metrics.registry.get_sample_value(
                "respublica_operator_reconciles_total", {"result": "success"}
            )
            if succeeded:
                break
            await asyncio.sleep(0.01)
        port = runner.addresses[0][1]
        async with httpx.AsyncClient() as client:
            return (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=10)).text
    finally:
        await queue.stop()
        await runner.cleanup()


@pytest.fixture(scope="module")
def operator_exported() -> set[str]:
    """Sample names of a real operator's /metrics after a failed reconcile and its retry."""
    text = asyncio.run(_scrape_operator())
    names = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    assert 'respublica_operator_reconciles_total{result="retry"}' in text, text
    assert 'respublica_operator_retries_total{error="TimeoutError"}' in text, text
    return names


@pytest.fixture(scope="module")
def engine_exported() -> set[str]:
    """Sample names vLLM (through Ray Serve LLM) and Ray Serve export, checked against their source."""
    vllm_source = (package_dir("vllm") / "v1" / "metrics" / "loggers.py").read_text()
    ray_dir = package_dir("ray")
    names: set[str] = set()
    for name, kind in VLLM_METRICS.items():
        defined = re.search(rf'self\._{kind}_cls\(\s*name="{re.escape(name)}"', vllm_source)
        assert defined, f"{name} is not a {kind} of vllm/v1/metrics/loggers.py"
        names |= ray_exported(name, kind)
    for name, (kind, source) in RAY_SERVE_METRICS.items():
        text = (ray_dir / "serve" / "_private" / source).read_text()
        defined = re.search(rf'{_CLASSES[kind]}\(\s*"{name}"', text)
        assert defined, f"{name} is not a {kind} of ray/serve/_private/{source}"
        names |= ray_exported(name, kind)
    return names


def test_the_ray_naming_is_upstreams() -> None:
    """`ray_exported` does what Ray and vLLM do to a name: checked against the installed source."""
    recorder = (
        package_dir("ray") / "_private" / "telemetry" / "open_telemetry_metric_recorder.py"
    ).read_text()
    assert 'NAMESPACE = "ray"' in recorder and 'name=f"{NAMESPACE}_{name}"' in recorder
    wrappers = (package_dir("vllm") / "v1" / "metrics" / "ray_wrappers.py").read_text()
    assert 're.sub(r"[^a-zA-Z0-9_]", "_", name)' in wrappers
    llm_config = (
        package_dir("ray") / "llm" / "_internal" / "serve" / "core" / "configs" / "llm_config.py"
    ).read_text()
    assert re.search(r"log_engine_metrics: Optional\[bool\] = Field\(\s*default=True", llm_config)
    assert ray_exported("vllm:prompt_tokens", "counter") == {"ray_vllm_prompt_tokens_total"}


def test_every_query_names_an_exported_metric(
    gateway_exported: set[str], engine_exported: set[str], operator_exported: set[str]
) -> None:
    queried = all_queried_names()
    unknown = {
        name: sorted(where)
        for name, where in queried.items()
        if name not in gateway_exported | engine_exported | operator_exported
    }
    assert not unknown, f"queries name metrics nobody exports: {unknown}"
    # Each source is used, and every metric of the gateway is on a dashboard.
    assert queried.keys() & gateway_exported and queried.keys() & engine_exported
    assert queried.keys() & operator_exported
    histogram_part = r"_(bucket|sum|count)$"
    gateway_families = {
        re.sub(histogram_part, "", n)
        for n in gateway_exported
        if n.startswith("respublica_") and not n.endswith("_created")
    }
    shown = {
        re.sub(histogram_part, "", n) for n, where in queried.items() if any(".json" in w for w in where)
    }
    assert gateway_families - shown == set(), "gateway metrics on no dashboard"


def test_the_check_catches_an_unknown_name(gateway_exported: set[str]) -> None:
    typo = 'sum(rate(respublica_gateway_request_total{status=~"5.."}[5m]))'
    assert metric_names(typo) - gateway_exported == {"respublica_gateway_request_total"}


# --- the rules --------------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool is not installed (Debian's prometheus package; scripts/install test installs it)"
        )
    return found


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's spec as a plain Prometheus rule file, with the unit tests beside it."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_document()["spec"], sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    return tmp_path


def test_promtool_check_rules(rules_dir: Path) -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(rules_dir / "rules.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_test_rules(rules_dir: Path) -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_a_broken_rule(rules_dir: Path) -> None:
    """The check above can fail: promtool refuses a rule whose expression does not parse."""
    broken = rule_document()["spec"]
    broken["groups"][0]["rules"][0]["expr"] = "sum(rate(x[5m])"
    (rules_dir / "rules.yaml").write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [promtool(), "check", "rules", str(rules_dir / "rules.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0


def test_prometheusrule_matches_its_crd() -> None:
    if not PROMETHEUSRULE_CRD.exists():
        pytest.skip(f"prometheus-operator's PrometheusRule CRD is not at {PROMETHEUSRULE_CRD}")
    crd = yaml.safe_load(PROMETHEUSRULE_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    doc = rule_document()
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", crd["spec"]["names"]["kind"])
    jsonschema.validate(doc, version["schema"]["openAPIV3Schema"])


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_severity_summary_and_a_runbook_section() -> None:
    anchors = {
        github_anchor(line.lstrip("#")) for line in RUNBOOKS.read_text().splitlines() if line.startswith("#")
    }
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) >= 8
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbooks.md" and anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/runbooks.md has no section for {rule['alert']}"


def test_every_alert_is_unit_tested_or_named_in_the_runbooks() -> None:
    tested = {
        alert["alertname"]
        for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for alert in case.get("alert_rule_test", [])
    }
    assert len(tested) >= 3 and tested <= {rule["alert"] for rule in rules() if "alert" in rule}


# --- the ConfigMap ----------------------------------------------------------------------------


def test_configmap_carries_the_dashboard_files() -> None:
    regenerate = "run `python tests/helpers/dashboards_configmap.py`"
    assert configmap.CONFIGMAP.read_text() == configmap.render(), regenerate
    doc = yaml.safe_load(configmap.CONFIGMAP.read_text())
    assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(doc["data"]) == {path.name for path in configmap.dashboard_files()}
    for name, text in doc["data"].items():
        assert json.loads(text) == dashboards()[name]


def test_dashboards_are_well_formed() -> None:
    for name, board in dashboards().items():
        assert board["uid"] == Path(name).stem and board["title"].startswith("respublica / ")
        panels = board["panels"]
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        variables = {variable["name"] for variable in board["templating"]["list"]}
        assert "datasource" in variables
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["description"], panel["title"]
            refs = [target["refId"] for target in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]
            for target in panel["targets"]:
                # Every $variable a query uses is defined (or is one of Grafana's own).
                for used in re.findall(r"\$\{?(\w+)", target["expr"]):
                    assert used.startswith("__") or used in variables, f"{panel['title']}: ${used}"
