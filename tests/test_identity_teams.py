"""Team rules (first match wins) and label-value sanitising, table-driven."""

from __future__ import annotations

import pytest

from gpucarbon.identity.teams import TEAM_MAX_LEN, TeamRules, sanitise_label_value

RULES = TeamRules(
    default="unassigned",
    pod_label="team",
    namespace_label="owner-team",
    namespaces={"research": "science", "blank": "\n\t"},
    workload_patterns=((r"PyTorchJob/llm-.*", "llm"), (r"Deployment/.*-api", "serving"), (r"train", "never-partial")),
)


@pytest.mark.parametrize(
    ("case", "namespace", "pod_labels", "ns_labels", "workload", "team", "rule"),
    [
        ("pod label wins over everything", "research", {"team": "ml"}, {"owner-team": "x"},
         "PyTorchJob/llm-7b", "ml", "pod_label"),
        ("namespace label next", "research", {}, {"owner-team": "infra"}, "PyTorchJob/llm-7b", "infra",
         "namespace_label"),
        ("static namespace map next", "research", {"app": "x"}, {}, "PyTorchJob/llm-7b", "science",
         "namespace_map"),
        ("workload regex next", "default", None, None, "PyTorchJob/llm-7b", "llm", "workload_pattern"),
        ("second regex", "default", None, None, "Deployment/search-api", "serving", "workload_pattern"),
        ("regex is anchored", "default", None, None, "Job/trainer", "unassigned", "default"),
        ("nothing matches", "default", None, None, "Pod/x", "unassigned", "default"),
        ("empty pod label falls through", "research", {"team": ""}, None, "", "science", "namespace_map"),
        ("control-only label falls through", "default", {"team": "\x00\x1b"}, None, "", "unassigned", "default"),
        ("whitespace-only map value falls through", "blank", None, None, "", "unassigned", "default"),
    ],
)
def test_first_matching_rule_names_the_team(case, namespace, pod_labels, ns_labels, workload, team, rule):
    decision = RULES.decide(namespace=namespace, pod_labels=pod_labels, namespace_labels=ns_labels,
                            workload=workload)
    assert (decision.team, decision.rule) == (team, rule), case


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ml", "ml"),
        ('team"with"quotes', 'team"with"quotes'),  # the exposition format escapes quotes itself
        ("back\\slash", "back\\slash"),
        ("line\nbreak\r\n", "linebreak"),
        ("tab\there", "tabhere"),
        ("  padded  ", "padded"),
        ("zero\u200bwidth\u202eoverride", "zerowidthoverride"),
        ("lone\udc80surrogate", "lonesurrogate"),
        ("sep\u2028arator", "separator"),
        ("ünïcödé-チーム", "ünïcödé-チーム"),
        (None, ""),
        (42, "42"),
        ("", ""),
    ],
)
def test_sanitise_keeps_printable_text_only(raw, expected):
    assert sanitise_label_value(raw) == expected


def test_ten_kilobyte_values_are_bounded_and_stay_distinct():
    a = "a" * 10_000 + "1"
    b = "a" * 10_000 + "2"
    clean_a, clean_b = sanitise_label_value(a), sanitise_label_value(b)
    assert len(clean_a) == TEAM_MAX_LEN and len(clean_b) == TEAM_MAX_LEN
    assert clean_a != clean_b  # a hash suffix keeps them apart
    assert clean_a.startswith("a" * 100) and "~" in clean_a
    assert sanitise_label_value(a) == clean_a  # stable across calls


def test_malicious_pod_label_cannot_break_a_metric_line():
    hostile = '"} evil_metric 1\n# TYPE x counter\n' + "\x00" * 5000
    team = RULES.decide(namespace="default", pod_labels={"team": hostile}).team
    assert "\n" not in team and "\x00" not in team and len(team) <= TEAM_MAX_LEN
    assert team.startswith('"} evil_metric 1')
    assert team.encode("utf-8")  # always encodable for /metrics


def test_exactly_max_length_is_kept_whole():
    value = "x" * TEAM_MAX_LEN
    assert sanitise_label_value(value) == value


def test_invalid_regex_is_rejected_naming_the_rule():
    with pytest.raises(ValueError, match=r"teams.workloads\[1\].match: '\(unclosed'"):
        TeamRules(workload_patterns=(("ok", "a"), ("(unclosed", "b")))


def test_default_must_be_printable():
    with pytest.raises(ValueError, match="teams.default"):
        TeamRules(default="\n")


@pytest.mark.parametrize(
    ("account", "user", "team"),
    [("physics", "alice", "physics"), ("", "carol", "platform"), (None, "dave", "dave"), (None, None, "unassigned"),
     ("\n", "dave", "dave")],
)
def test_slurm_team_from_account_then_user(account, user, team):
    rules = TeamRules(users={"carol": "platform"})
    assert rules.team_for_account(account, user) == team


@pytest.mark.parametrize(("user", "team"), [("carol", "platform"), ("eve", "unassigned"), (None, "unassigned")])
def test_plain_host_team_from_user_map(user, team):
    assert TeamRules(users={"carol": "platform"}).team_for_user(user) == team


def test_rules_are_immutable_after_construction():
    source = {"research": "science"}
    rules = TeamRules(namespaces=source)
    source["research"] = "changed"
    assert rules.decide(namespace="research").team == "science"
    with pytest.raises(TypeError):
        rules.namespaces["x"] = "y"  # type: ignore[index]
