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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# The sanitiser lives in gpucarbon.labels (shared by every source); re-exported
# here because the identity modules import it from teams.
from gpucarbon.labels import TEAM_MAX_LEN, WORKLOAD_MAX_LEN, sanitise_label_value  # noqa: F401


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
