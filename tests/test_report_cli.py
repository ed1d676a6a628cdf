"""The report command without a real store: bad usage (exit 2, one line), what
the client sends (auth), how store problems read (exit 1, one line), and the
renderers on a report built by hand."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from fakes.prometheus_api import FakePrometheus, success, vector
from procs import ROOT

from gpucarbon import cli
from gpucarbon.report import queries as q
from gpucarbon.report.model import Day, Figures, Group, IntensitySource, Report, WorkloadUse, to_json
from gpucarbon.report.receipts import summarize
from gpucarbon.report.render import FORMATS, renderer


def run_report(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = cli.main(["report", *args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "args, named",
    [
        ([], "--prometheus.url"),
        (["--prometheus.url=ftp://x"], "'ftp://x'"),
        (["--prometheus.url=http://x", "--range=30x"], "'30x'"),
        (["--prometheus.url=http://x", "--range=0s"], "'0s'"),
        (["--prometheus.url=http://x", "--end=yesterday"], "'yesterday'"),
        (["--prometheus.url=http://x", "--end=2026-11-01T00:00:00"], "time zone"),
        (["--prometheus.url=http://x", "--by=cluster"], "--by"),
        (["--prometheus.url=http://x", "--format=pdf"], "--format"),
        (["--prometheus.url=http://x", "--offset-price=-3"], "'-3'"),
        (["--prometheus.url=http://x", "--receipts", "/no/such/receipts"], "/no/such/receipts"),
        (["--prometheus.url=http://x", "--basic-auth.password-file=/etc/hostname"], "--basic-auth.username"),
        (["--prometheus.url=http://x", "--tls.ca-file=/no/ca.pem"], "--tls.ca-file /no/ca.pem"),
        (["--prometheus.url=http://x", "--bearer-token-file=/no/token"], "/no/token"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(capsys, args, named):
    code, out, err = run_report(capsys, *args)
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and named in err, err


@pytest.mark.parametrize(
    "content, named",
    [
        ("basic_auth: {username: u, pasword: p}\n", "basic_auth.pasword: unknown key"),
        ("tls_config: {insecure_skip_verify: maybe}\n", "tls_config.insecure_skip_verify: 'maybe'"),
        ("bearer_token: t\nbasic_auth: {username: u}\n", "mutually exclusive"),
        ("proxy: {url: x}\n", "proxy: unknown key"),
        ("[not, a, mapping]\n", "(top level): must be a mapping"),
    ],
)
def test_a_bad_http_config_file_names_file_and_key(capsys, tmp_path, content, named):
    path = tmp_path / "http.yml"
    path.write_text(content)
    code, _, err = run_report(capsys, "--prometheus.url=http://x", f"--http.config.file={path}")
    assert code == 2 and str(path) in err and named in err and err.count("\n") == 1, err


def _empty_store(endpoint, form):
    return success([] if endpoint == "series" else vector())


def test_basic_auth_from_the_http_config_file_is_sent(capsys, tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    config = tmp_path / "http.yml"
    config.write_text(f"basic_auth: {{username: finance, password_file: {tmp_path / 'pw'}}}\n")
    with FakePrometheus(_empty_store) as store:
        code, _, err = run_report(capsys, f"--prometheus.url={store.url}", f"--http.config.file={config}")
    assert code == 1 and "no gpu-carbon-exporter metrics" in err
    expected = "Basic " + base64.b64encode(b"finance:s3cret").decode()
    assert {s.headers["Authorization"] for s in store.seen} == {expected}


def test_a_bearer_token_file_is_sent_and_a_refusal_names_the_url(capsys, tmp_path):
    (tmp_path / "token").write_text("tok-123\n")

    def gateway(endpoint, form):
        return (401, {"status": "error", "errorType": "unauthorized", "error": "no"})

    with FakePrometheus(gateway) as store:
        code, _, err = run_report(capsys, f"--prometheus.url={store.url}", f"--bearer-token-file={tmp_path / 'token'}")
    assert store.seen[0].headers["Authorization"] == "Bearer tok-123"
    assert code == 1 and store.url in err and "HTTP 401" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (503, {"status": "error", "errorType": "unavailable", "error": "querier overloaded"}, "querier overloaded"),
        (200, b"<html>login</html>", "not JSON"),
        (422, {"status": "error", "errorType": "execution", "error": "query timed out"}, "HTTP 422"),
    ],
)
def test_store_errors_are_one_line_and_exit_1(capsys, status, body, expected):
    with FakePrometheus(lambda endpoint, form: (status, body)) as store:
        code, out, err = run_report(capsys, f"--prometheus.url={store.url}")
    assert code == 1 and out == "" and expected in err and err.count("\n") == 1, err


def _store_with(rules: set[str], energy: bool):
    def answer(endpoint, form):
        if endpoint == "series":
            if form["match[]"] == q.BUILD_INFO:
                return success([{"__name__": q.BUILD_INFO, "instance": "a:9789"}])
            return success([{"__name__": name} for name in sorted(rules)])
        if endpoint == "query_range":
            return success({"resultType": "matrix", "result": []})
        return success(vector(({}, 0.0)) if energy else vector())

    return answer


def test_missing_rules_are_each_named(capsys):
    present = set(q.required_rules(q.GROUPINGS["team"])) - {q.TOTAL_UNATTRIBUTED, q.GROUPINGS["team"].busy}
    with FakePrometheus(_store_with(present, energy=False)) as store:
        code, _, err = run_report(capsys, f"--prometheus.url={store.url}")
    assert code == 1 and err.count("\n") == 1
    assert q.TOTAL_UNATTRIBUTED in err and q.GROUPINGS["team"].busy in err
    assert q.TOTAL_ENERGY not in err, "only the missing ones"
    assert "gpucarbon-recording.yaml" in err and "prometheusRule.enabled" in err


def test_a_range_without_energy_is_no_data(capsys):
    rules = set(q.required_rules(q.GROUPINGS["namespace"]))
    with FakePrometheus(_store_with(rules, energy=False)) as store:
        code, _, err = run_report(capsys, f"--prometheus.url={store.url}", "--by=namespace")
    assert code == 1 and "no GPU energy recorded" in err and err.count("\n") == 1, err


def test_queries_go_by_post_with_the_end_time(capsys):
    with FakePrometheus(_empty_store) as store:
        run_report(capsys, f"--prometheus.url={store.url}/", "--end=2026-11-01T00:00:00Z", "--range=1w")
    series = store.seen[0]
    assert series.path == "/api/v1/series"
    assert float(series.form["end"]) == 1_793_491_200.0
    assert float(series.form["end"]) - float(series.form["start"]) == 7 * 86400


# --- the model and the renderers ----------------------------------------------


def _figures(kwh: float, **over) -> dict:
    base = dict(
        energy_kwh=kwh,
        facility_energy_kwh=kwh * 1.2,
        emissions_kg=kwh * 0.4,
        cost=kwh * 0.25,
        offset_cost=kwh * 0.4 / 1000 * 80,
        gpu_hours_held=kwh * 2,
        gpu_hours_busy=kwh,
        busy_share=0.5,
        idle_energy_kwh=kwh * 0.07,
        failed_energy_kwh=None,
        repeated_energy_kwh=0.0,
    )
    return {**base, **over}


def hand_report(receipts=None) -> Report:
    groups = (
        Group(name="nlp", labels={"team": "nlp"}, **_figures(120.0)),
        Group(name="vision", labels={"team": "vision"}, **_figures(30.5, cost=None, busy_share=None)),
    )
    day = 86400.0
    return Report(
        start=1_790_000_000.0,
        end=1_790_000_000.0 + 2 * day,
        by="team",
        source_url="http://prom:9090",
        groups=groups,
        totals=Figures(**_figures(160.0)),
        unattributed_energy_kwh=9.5,
        daily=(
            Day(1_790_000_000.0, 1_790_000_000.0 + day, {"nlp": 60.0, "vision": 10.0}, {"nlp": 24.0}),
            Day(1_790_000_000.0 + day, 1_790_000_000.0 + 2 * day, {"nlp": 60.0, "vision": 20.5}, {}),
        ),
        top_workloads=(WorkloadUse("research", "Job/bert", "nlp", energy_kwh=100.0),),
        top_idle=(WorkloadUse("vision", "StatefulSet/nb", "vision", gpu_hours_idle=40.0, idle_energy_kwh=2.8),),
        intensity_sources=(IntensitySource("FR", "table", "average", 56.0),),
        pue=1.2,
        currency="EUR",
        offset_price_per_tonne=80.0,
        receipts=receipts,
        notes=("a note",),
    )


def test_the_json_has_the_documented_shape():
    doc = to_json(hand_report(summarize([str(ROOT / "tests" / "fixtures" / "receipts")])))
    assert {"range", "groups", "unattributed_energy_kwh", "totals", "daily", "top_workloads", "runs"} <= set(doc)
    assert set(doc["range"]) >= {"start", "end"} and doc["range"]["start"].endswith("Z")
    issue_fields = {
        "name",
        "energy_kwh",
        "facility_energy_kwh",
        "emissions_kg",
        "cost",
        "offset_cost",
        "gpu_hours_held",
        "gpu_hours_busy",
        "idle_energy_kwh",
        "failed_energy_kwh",
        "repeated_energy_kwh",
    }
    assert issue_fields <= set(doc["groups"][0])
    assert doc["groups"][1]["cost"] is None, "unknown stays null, not 0"
    assert doc["unattributed_share"] == pytest.approx(9.5 / 160.0)
    assert doc["runs"][0]["id"] == "llama-ft-7d2" and doc["runs"][0]["nodes"] == ["node-a", "node-b"]
    assert doc["receipts"]["malformed"] == 8
    json.dumps(doc, allow_nan=False)  # strict JSON: no NaN or Infinity


def test_the_json_fields_are_documented():
    docs = (ROOT / "docs" / "report.md").read_text()
    doc = to_json(hand_report(summarize([str(ROOT / "tests" / "fixtures" / "receipts")])))
    names = (
        set(doc)
        | set(doc["groups"][0])
        | set(doc["daily"][0])
        | set(doc["top_workloads"][0])
        | set(doc["runs"][0])
        | set(doc["receipts"])
        | set(doc["intensity_sources"][0])
    )
    undocumented = sorted(n for n in names if f"`{n}`" not in docs)
    assert not undocumented, f"docs/report.md does not document {undocumented}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_groups_totals_and_unknowns(fmt):
    text = renderer(fmt)(hand_report(summarize([str(ROOT / "tests" / "fixtures" / "receipts")])))
    for needle in ("nlp", "vision"):
        assert needle in text
    if fmt in ("table", "markdown", "html"):
        assert "120.0" in text and "Total" in text and "llama-ft-7d2" in text
    if fmt == "csv":
        rows = text.splitlines()
        assert rows[0].startswith("team,energy_kwh,") and rows[-1].startswith("Total,160.0,")
        assert rows[2].split(",")[4] == "", "unknown cost is an empty cell"


def test_the_html_is_self_contained():
    text = renderer("html")(hand_report())
    assert not re.search(r"<script[^>]*\bsrc=|<link[^>]*\bhref=", text), "no external script or stylesheet"
    assert text.count('class="chart"') == 4
    assert "Plotly" in text[:2_000_000]


def test_progress_goes_to_a_terminal_only():
    from gpucarbon.report.cli import Progress

    stream = io.StringIO()
    progress = Progress(stream)
    progress("energy per team")
    progress.done()
    assert "[1] energy per team" in stream.getvalue() and stream.getvalue().endswith("\r\033[K")


def test_every_flag_is_documented():
    from gpucarbon.report.cli import build_parser

    docs = (ROOT / "docs" / "report.md").read_text()
    flags = [f for a in build_parser()._actions for f in a.option_strings if f.startswith("--") and f != "--help"]
    assert "--prometheus.url" in flags
    missing = [f for f in flags if f"`{f}`" not in docs and f"`{f} " not in docs]
    assert not missing, f"flags missing from docs/report.md: {missing}"
