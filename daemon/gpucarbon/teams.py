"""Which team pays for a workload: configured rules, first match wins.

Order (documented in docs/kubernetes.md):

1. the pod's label `pod_label` (default `team`);
2. the namespace's label `namespace_label` (default `team`);
3. the static `namespaces` map, namespace -> team;
4. `workload_patterns`, (regex, team) pairs tried in order against the workload
   value (`Deployment/trainer`); a pattern must match the whole value (anchored,
   as in Prometheus relabelling);
5. `default` (`unassigned`).

Plain hosts and Slurm use `team_for_user` / `team_for_account`.

Every value that becomes a metric label goes through `sanitise_label_value` (teams
here, workloads in owners.py and slurm.py, pod consumers in resolver.py): label
values come from users (pod labels, Slurm accounts) and must never crash the
exporter or blow up a scrape. A rule whose value sanitises to "" does not match.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

TEAM_MAX_LEN = 128  # characters; Kubernetes label values are at most 63
WORKLOAD_MAX_LEN = 320  # "<Kind>/<name>": Kubernetes names are at most 253 characters
# Unicode categories removed from label values: control (Cc), format (Cf: zero-width
# and bidi overrides that make two values look alike), lone surrogates (Cs: cannot be
# encoded as UTF-8 on /metrics), line and paragraph separators (Zl, Zp).
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_HASH_CHARS = 8


def sanitise_label_value(value: object, max_len: int = TEAM_MAX_LEN) -> str:
    """A printable, bounded label value; "" for None or nothing printable.

    Over-long values keep a prefix plus `~` and 8 hex of their SHA-256, so two long
    values that share a prefix stay distinct series instead of merging.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    # Bound the work before the per-character pass: a 10 MB label costs no more
    # than a short one. Hash the full original so truncation stays distinct.
    head = text[: max_len * 4]
    cleaned = "".join(ch for ch in head if unicodedata.category(ch) not in _DROPPED_CATEGORIES).strip()
    if len(cleaned) <= max_len and len(head) == len(text):
        return cleaned
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    return cleaned[: max_len - _HASH_CHARS - 1] + "~" + digest


@dataclass(frozen=True, slots=True)
class TeamDecision:
    team: str
    rule: str  # "pod_label", "namespace_label", "namespace_map", "workload_pattern", "default"


@dataclass(frozen=True)
class TeamRules:
    default: str = "unassigned"
    pod_label: str = "team"
    namespace_label: str = "team"
    namespaces: Mapping[str, str] = field(default_factory=dict)
    workload_patterns: tuple[tuple[str, str], ...] = ()  # (regex, team), first match wins
    users: Mapping[str, str] = field(default_factory=dict)  # plain hosts: user -> team
    _compiled: tuple[tuple[re.Pattern[str], str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = []
        for i, (pattern, team) in enumerate(self.workload_patterns):
            try:
                compiled.append((re.compile(pattern), team))
            except re.error as err:
                raise ValueError(f"teams.workloads[{i}].match: {pattern!r}: invalid regex: {err}") from None
        object.__setattr__(self, "_compiled", tuple(compiled))
        object.__setattr__(self, "namespaces", MappingProxyType(dict(self.namespaces)))
        object.__setattr__(self, "users", MappingProxyType(dict(self.users)))
        if not sanitise_label_value(self.default):
            raise ValueError(f"teams.default: {self.default!r}: must have a printable character")

    def decide(
        self,
        *,
        namespace: str,
        pod_labels: Mapping[str, str] | None = None,
        namespace_labels: Mapping[str, str] | None = None,
        workload: str = "",
    ) -> TeamDecision:
        """The team of a pod and the rule that chose it (for debugging and docs)."""
        if team := _label(pod_labels, self.pod_label):
            return TeamDecision(team, "pod_label")
        if team := _label(namespace_labels, self.namespace_label):
            return TeamDecision(team, "namespace_label")
        if team := sanitise_label_value(self.namespaces.get(namespace)):
            return TeamDecision(team, "namespace_map")
        if workload:
            for pattern, team in self._compiled:
                if pattern.fullmatch(workload) and (clean := sanitise_label_value(team)):
                    return TeamDecision(clean, "workload_pattern")
        return TeamDecision(sanitise_label_value(self.default), "default")

    def team_for_user(self, user: str | None) -> str:
        """Plain hosts: the static user -> team map, else the default."""
        team = sanitise_label_value(self.users.get(user)) if user else ""
        return team or sanitise_label_value(self.default)

    def team_for_account(self, account: str | None, user: str | None) -> str:
        """Slurm: the job's account; without one, the user's mapped team; without
        a mapping, the user name itself (the issue: "user otherwise")."""
        if team := sanitise_label_value(account):
            return team
        if user and (team := sanitise_label_value(self.users.get(user))):
            return team
        return sanitise_label_value(user) or sanitise_label_value(self.default)


def _label(labels: Mapping[str, str] | None, key: str) -> str:
    if not labels or not key:
        return ""
    return sanitise_label_value(labels.get(key))
