"""The gateway's Prometheus metrics, checked by Prometheus' own tools against the real server:
`promtool check metrics` on our families, a real Prometheus scraping `/metrics` on loopback
and counting exactly what this module sends to the `metrics-probe` expert (used by no other
test), and the Grafana dashboard's queries against what the server really exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from conftest import ends_with_this_process, free_port

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "expert-gateway.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "expert-gateway.yml"
DEPLOY_README = REPO / "deploy" / "README.md"

PROBE = "metrics-probe"  # max_tokens 4, json grammar, json validation: see tests/conftest.py
N_PLAIN = 5
N_STREAM = 2
JSON_PROMPT = "Reply in JSON with one key answer. What is 2+2?"
METRIC_NAME = re.compile(r"(expert_gateway_[a-z_]+|vllm:[a-z_:]+)")
WAIT_S = 30

OUR_FAMILIES = {
    "expert_gateway_requests_total": "counter",
    "expert_gateway_request_duration_seconds": "histogram",
    "expert_gateway_time_to_first_token_seconds": "histogram",
    "expert_gateway_prompt_tokens_total": "counter",
    "expert_gateway_generation_tokens_total": "counter",
    "expert_gateway_requests_in_flight": "gauge",
    "expert_gateway_expert_info": "gauge",
    "expert_gateway_experts_loaded": "gauge",
    "expert_gateway_reloads_total": "counter",
    "expert_gateway_reload_duration_seconds": "histogram",
    "expert_gateway_output_validations_total": "counter",
}


# ---------------------------------------------------------------------------- helpers


def require_tool(name: str) -> str:
    """The path of a Prometheus program; missing fails on CI and skips elsewhere."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path is None:
        reason = (
            f"{name} is not installed (Debian package `prometheus`; "
            "scripts/install-test-services.sh installs it when run as root)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def fetch_metrics(server) -> str:
    r = httpx.get(server.url + "/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def own_families(text: str) -> str:
    """The `expert_gateway_*` families of an exposition: their HELP/TYPE lines and samples."""
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(maxsplit=3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and parts[2].startswith("expert_gateway_"):
                kept.append(line)
        elif line.startswith("expert_gateway_"):
            kept.append(line)
    return "\n".join(kept) + "\n"


def exported_sample_names(text: str) -> set[str]:
    """Every sample name the exposition has or can have: the samples present, and for each
    declared family the names its type produces (a counter or histogram without samples yet
    is still exported)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "counter":
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
            elif kind == "summary":
                names.update({name, name + "_sum", name + "_count"})
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = WAIT_S) -> Any:
    """fetch() until done(value) or timeout; returns the last value (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return out


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def panel_exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def probe_traffic(server, openai_client) -> dict[str, Any]:
    """N non-streaming and M streaming completions of `metrics-probe`, then one request with an
    invalid temperature (400). Returns what the client saw, to compare the metrics with."""
    texts: list[str] = []
    prompt_tokens = completion_tokens = 0
    for i in range(N_PLAIN):
        if i == 0:  # room for a complete JSON object: the "ok" side of the output validation
            r = openai_client.chat.completions.create(
                model=PROBE, max_tokens=40, messages=[{"role": "user", "content": JSON_PROMPT}]
            )
        else:
            r = openai_client.chat.completions.create(
                model=PROBE, messages=[{"role": "user", "content": f"Say hello {i}."}]
            )
        texts.append(r.choices[0].message.content or "")
        prompt_tokens += r.usage.prompt_tokens
        completion_tokens += r.usage.completion_tokens
    for i in range(N_STREAM):
        parts, usage = [], None
        for chunk in openai_client.chat.completions.create(
            model=PROBE,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
        ):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
        assert usage is not None, "the stream ended without its usage chunk"
        texts.append("".join(parts))
        prompt_tokens += usage.prompt_tokens
        completion_tokens += usage.completion_tokens
    bad = httpx.post(
        server.url + "/v1/chat/completions",
        timeout=60,
        json={"model": PROBE, "temperature": -1, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert bad.status_code == 400, bad.text
    return {"texts": texts, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on loopback scraping the test server every second; its base URL."""
    binary = require_tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "expert-gateway",
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "metrics_path": "/metrics",
                        "static_configs": [{"targets": [urlsplit(server.url).netloc]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    log_path = work / "prometheus.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=ends_with_this_process,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after {WAIT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        # the target is scraped and up
        up = poll(lambda: query(url, 'up{job="expert-gateway"}'), lambda r: [s["value"][1] for s in r] == ["1"])
        assert [s["value"][1] for s in up] == ["1"], f"target not up: {up}\n{log_path.read_text()[-3000:]}"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def query(prom_url: str, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(prom_url + "/api/v1/query", params={"query": promql}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body.get("status") == "success", f"{promql}: {r.status_code} {body}"
    return body["data"]["result"]


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


# ---------------------------------------------------------------------------- a. promtool


def test_promtool_accepts_the_gateway_families(server, probe_traffic):
    promtool = require_tool("promtool")
    text = own_families(fetch_metrics(server))
    declared = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    for name, kind in OUR_FAMILIES.items():
        assert declared.get(name) == kind, f"{name}: declared {declared.get(name)!r}, expected {kind}"
    for sample in (
        "expert_gateway_requests_total",
        "expert_gateway_request_duration_seconds_bucket",
        "expert_gateway_time_to_first_token_seconds_count",
        "expert_gateway_output_validations_total",
    ):
        assert re.search(rf'^{sample}{{[^}}]*expert="{PROBE}"', text, re.M), f"no {sample} sample for {PROBE}"

    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    problems = [line for line in (check.stdout + check.stderr).splitlines() if line.strip()]
    assert check.returncode == 0 and not problems, f"promtool exit {check.returncode}:\n" + "\n".join(problems)

    # the check is live: promtool does flag a badly named family
    bad = (
        "# HELP expert_gateway_bad A counter without _total.\n# TYPE expert_gateway_bad counter\nexpert_gateway_bad 1\n"
    )
    control = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, text=True, timeout=60)
    assert control.returncode != 0 and "_total" in control.stdout + control.stderr, control


# ---------------------------------------------------------------------------- b. real Prometheus


def test_prometheus_counts_exactly_what_was_sent(server, prometheus, probe_traffic):
    n = N_PLAIN + N_STREAM
    want = {"200": float(n), "400": 1.0}
    promql = f'sum by (status) (expert_gateway_requests_total{{expert="{PROBE}"}})'
    got = poll(lambda: by_label(query(prometheus, promql), "status"), lambda v: v == want)
    assert got == want, f"{promql}: {got}"

    info = query(prometheus, f'expert_gateway_expert_info{{expert="{PROBE}"}}')
    assert len(info) == 1, info
    assert float(info[0]["value"][1]) == 1.0
    assert info[0]["metric"]["version"] == "1.0.0"
    assert info[0]["metric"]["base_model"] == server.base_model
    assert info[0]["metric"].get("adapter", "") == ""  # Prometheus drops empty labels

    # json validation of every answer; max_tokens 4 cuts the JSON (counted "failed"), the one
    # longer answer can be complete: the expected split is what the client actually received
    texts = probe_traffic["texts"]
    ok = sum(1 for t in texts if _parses(t))
    want_checks = {k: float(v) for k, v in (("ok", ok), ("failed", n - ok)) if v}
    checks = by_label(
        query(
            prometheus, f'sum by (result) (expert_gateway_output_validations_total{{expert="{PROBE}",check="json"}})'
        ),
        "result",
    )
    assert checks == want_checks, f"validations {checks}, answers {texts}"
    assert sum(checks.values()) == n

    # one latency and one TTFT observation per successful request (none for the 400)
    for hist in ("expert_gateway_request_duration_seconds", "expert_gateway_time_to_first_token_seconds"):
        count = query(prometheus, f'sum({hist}_count{{expert="{PROBE}"}})')
        assert [float(s["value"][1]) for s in count] == [float(n)], f"{hist}_count: {count}"
    tokens = {
        "expert_gateway_prompt_tokens_total": probe_traffic["prompt_tokens"],
        "expert_gateway_generation_tokens_total": probe_traffic["completion_tokens"],
    }
    for name, expected in tokens.items():
        result = query(prometheus, f'sum({name}{{expert="{PROBE}"}})')
        assert [float(s["value"][1]) for s in result] == [float(expected)], f"{name}: {result}"
    in_flight = query(prometheus, f'sum(expert_gateway_requests_in_flight{{expert="{PROBE}"}})')
    assert [float(s["value"][1]) for s in in_flight] == [0.0], in_flight

    ready = httpx.get(server.url + "/ready", timeout=10).json()
    loaded = query(prometheus, "expert_gateway_experts_loaded")
    assert [float(s["value"][1]) for s in loaded] == [float(len(ready["experts"]))], (loaded, ready)

    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        series = query(prometheus, name)
        assert len(series) >= 1, f"no {name} series in Prometheus"
        assert series[0]["metric"].get("job") == "expert-gateway"


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------- c. Grafana dashboard


def test_dashboard_metrics_are_exported_by_the_server(server, probe_traffic):
    dashboard = load_dashboard()
    exported = exported_sample_names(fetch_metrics(server))
    used: set[str] = set()
    for panel in query_panels(dashboard):
        exprs = panel_exprs(panel)
        assert exprs, f"panel {panel['title']!r} has no query"
        for expr in exprs:
            names = set(METRIC_NAME.findall(expr))
            assert names, f"panel {panel['title']!r}: no metric in {expr!r}"
            used |= names
    missing = sorted(used - exported)
    assert not missing, f"the dashboard uses metrics /metrics does not export: {missing}"

    def panels_using(*needles: str) -> list[str]:
        return [
            p["title"] for p in query_panels(dashboard) if any(all(n in e for n in needles) for e in panel_exprs(p))
        ]

    coverage = {
        "request rate": ("rate(expert_gateway_requests_total{",),
        "error rate": ("expert_gateway_requests_total{", 'status=~"4..|5.."'),
        "latency p50": ("histogram_quantile(0.5,", "expert_gateway_request_duration_seconds_bucket"),
        "latency p95": ("histogram_quantile(0.95,", "expert_gateway_request_duration_seconds_bucket"),
        "TTFT p50": ("histogram_quantile(0.5,", "expert_gateway_time_to_first_token_seconds_bucket"),
        "TTFT p95": ("histogram_quantile(0.95,", "expert_gateway_time_to_first_token_seconds_bucket"),
        "generated tokens/s": ("rate(expert_gateway_generation_tokens_total",),
        "in flight": ("expert_gateway_requests_in_flight",),
        "reloads by result": ("expert_gateway_reloads_total", "result"),
        "reload duration": ("expert_gateway_reload_duration_seconds_",),
        "output validation failed share": ("expert_gateway_output_validations_total", 'result="failed"'),
        "experts loaded": ("expert_gateway_experts_loaded",),
        "KV cache": ("vllm:kv_cache_usage_perc",),
        "engine running": ("vllm:num_requests_running",),
        "engine waiting": ("vllm:num_requests_waiting",),
    }
    uncovered = [what for what, needles in coverage.items() if not panels_using(*needles)]
    assert not uncovered, f"no dashboard panel for: {uncovered}"


def test_dashboard_structure_and_provisioning():
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds_var = variables.get("DS_PROMETHEUS")
    assert ds_var is not None and ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    expert = variables.get("expert")
    assert expert is not None and expert["type"] == "query"
    assert expert["multi"] is True and expert["includeAll"] is True
    definition = expert["query"]["query"] if isinstance(expert["query"], dict) else expert["query"]
    assert re.fullmatch(r"label_values\(\s*expert_gateway_expert_info\s*,\s*expert\s*\)", definition), definition
    assert expert["datasource"]["uid"] == "${DS_PROMETHEUS}"

    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in query_panels(dashboard):
        title = panel["title"]
        assert panel["type"] in ("timeseries", "stat"), (title, panel["type"])
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), title
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, title
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", title
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", title
            expr = target["expr"]
            # the expert selector applies to every per-expert family but the expert count
            if "expert_gateway_" in expr and "expert_gateway_experts_loaded" not in expr:
                assert 'expert=~"$expert"' in expr, f"{title}: {expr} ignores $expert"

    sources = yaml.safe_load(DATASOURCES.read_text())
    assert sources["apiVersion"] == 1
    [prom] = [d for d in sources["datasources"] if d["type"] == "prometheus"]
    assert prom["uid"] == ds_var["current"]["value"], "the dashboard's default data source is not the provisioned one"
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    readme = DEPLOY_README.read_text()
    assert "## Dashboards" in readme
    assert f"deploy/grafana/dashboards:{path}" in readme or f"/dashboards:{path}" in readme, (
        f"deploy/README.md does not show mounting the dashboards at {path}"
    )


def test_dashboard_queries_run_in_prometheus(server, prometheus, probe_traffic):
    """Every panel query, with the variables as Grafana fills them for the one expert
    `metrics-probe`, is valid PromQL for Prometheus and, but for reloads (none in this session
    for that expert), returns series."""
    poll(
        lambda: query(prometheus, 'count_over_time(up{job="expert-gateway"}[1m])'),
        lambda r: r and float(r[0]["value"][1]) >= 5,
    )
    empty = []
    for panel in query_panels(load_dashboard()):
        for expr in panel_exprs(panel):
            promql = expr.replace("$__rate_interval", "1m").replace("$expert", PROBE)
            assert "$" not in promql, f"{panel['title']!r}: unknown variable in {expr!r}"
            result = query(prometheus, promql)  # asserts Prometheus accepted it
            if not result and "reload" not in expr:
                empty.append((panel["title"], promql))
    assert not empty, f"queries without data: {empty}"
