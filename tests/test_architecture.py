"""The shape docs/architecture.md describes, checked: no module imports a stage
above it, so a joule goes NVML -> /metrics forward only and each stage can be
read (and tested) without the ones after it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "gpucarbon"
FOUNDATION = (
    "gpucarbon.errors",
    "gpucarbon.clock",
    "gpucarbon.backoff",
    "gpucarbon.yamlcheck",
    "gpucarbon.teams",
    "gpucarbon.labels",  # the one label sanitiser, used by every source
    "gpucarbon.fileperms",  # start-up warnings about file modes
)

# Module (or package) -> what it may import from gpucarbon, besides itself and the foundation.
ALLOWED: dict[str, tuple[str, ...]] = {
    "gpucarbon.device": (),
    "gpucarbon.config": (),
    "gpucarbon.state": (),
    "gpucarbon.carbon": ("gpucarbon.config",),
    "gpucarbon.identity": ("gpucarbon.device.model",),
    "gpucarbon.attribution": ("gpucarbon.device.model",),
    "gpucarbon.ledger": ("gpucarbon.identity.model",),
    "gpucarbon.simulation": ("gpucarbon.device", "gpucarbon.identity"),
    "gpucarbon.accounting": (
        "gpucarbon.attribution",
        "gpucarbon.carbon.model",
        "gpucarbon.device",
        "gpucarbon.identity.model",
        "gpucarbon.ledger",
    ),
    "gpucarbon.snapshot": (
        "gpucarbon.accounting",
        "gpucarbon.attribution.energy",
        "gpucarbon.carbon.model",
        "gpucarbon.device.reader",
        "gpucarbon.identity.health",
        "gpucarbon.ledger",
    ),
    "gpucarbon.checkpoint": ("gpucarbon.attribution", "gpucarbon.ledger", "gpucarbon.snapshot", "gpucarbon.state"),
    "gpucarbon.poller": (
        "gpucarbon.accounting",
        "gpucarbon.carbon.model",
        "gpucarbon.checkpoint",
        "gpucarbon.device.reader",
        "gpucarbon.identity.health",
        "gpucarbon.ledger",
        "gpucarbon.snapshot",
    ),
    "gpucarbon.exporter": ("gpucarbon", "gpucarbon.snapshot"),
    # Receipts read what the loop published (snapshots) and what the identity
    # sources know of a run's end; nothing below them reads receipts.
    "gpucarbon.receipts": ("gpucarbon.config", "gpucarbon.identity", "gpucarbon.snapshot"),
    # The report subcommand reads the PromQL store, not the daemon: no stage at all.
    "gpucarbon.report": (),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name == "gpucarbon" or name.startswith("gpucarbon.")}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def rule_for(module: str) -> tuple[str, tuple[str, ...]] | None:
    matches = [key for key in ALLOWED if within(module, (key,))]
    return (max(matches, key=len), ALLOWED[max(matches, key=len)]) if matches else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "proto" not in p.parts)
# Every module but the composition root (app, cli, __main__) and the foundation has a rule.
STAGED = [p for p in MODULES if rule_for(module_name(p)) is not None]


@pytest.mark.parametrize("path", STAGED, ids=lambda p: module_name(p))
def test_no_module_imports_a_stage_above_it(path: Path) -> None:
    module = module_name(path)
    own, allowed = rule_for(module) or ("", ())
    upward = sorted(name for name in imported(path) if not within(name, (own, *FOUNDATION, *allowed)))
    assert upward == [], f"{module} imports {upward}"


def test_only_the_composition_root_and_the_foundation_go_unchecked() -> None:
    unchecked = {module_name(p) for p in MODULES} - {module_name(p) for p in STAGED}
    assert unchecked == {"gpucarbon", "gpucarbon.__main__", "gpucarbon.app", "gpucarbon.cli", *FOUNDATION}


def test_foundation_modules_import_nothing_but_the_foundation() -> None:
    for name in FOUNDATION:
        path = PACKAGE / (name.removeprefix("gpucarbon.") + ".py")
        assert imported(path) <= set(FOUNDATION), name


def test_config_does_not_import_identity() -> None:
    assert not any(within(name, ("gpucarbon.identity",)) for name in imported(PACKAGE / "config.py"))


def test_poller_is_only_the_loop() -> None:
    lines = (PACKAGE / "poller.py").read_text("utf-8").splitlines()
    assert len(lines) < 200, f"poller.py has {len(lines)} lines"


def test_one_module_imports_pynvml() -> None:
    users = [module_name(p) for p in MODULES if "pynvml" in {n.split(".")[0] for n in _all_imports(p)}]
    assert users == ["gpucarbon.device.nvml"]


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names
