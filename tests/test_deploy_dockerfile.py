"""The Dockerfile keeps the properties issues 5 and 10 ask for.

The Dockerfile is parsed (line continuations and comments handled as Docker
does) and its instructions checked one by one; tests/test_image.py builds and
runs it for real.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, e.g. "RUN"
    args: str  # the rest of the instruction, continuations joined
    stage: int  # 0-based index of the FROM stage it belongs to


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions the way the builder reads it."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _stage_names(instructions: list[Instruction]) -> dict[int, str]:
    names = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            parts = ins.args.split()
            names[ins.stage] = parts[2].lower() if len(parts) >= 3 and parts[1].upper() == "AS" else ""
    return names


def _resolve_args(value: str, instructions: list[Instruction]) -> str:
    """Substitute global ARG defaults (those before the first FROM)."""
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG" and ins.stage == -1 and "=" in ins.args:
            key, _, default = ins.args.partition("=")
            defaults[key] = default
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)), value)


def _final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(ins.stage for ins in instructions)
    return [ins for ins in instructions if ins.stage == last]


def _env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV uses the legacy 'ENV key value' form: {ins.args!r}"
                env[key] = value
    return env


def _labels(instructions: list[Instruction]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "LABEL":
            for token in shlex.split(ins.args):
                key, _, value = token.partition("=")
                labels[key] = value
    return labels


def test_parser_joins_continuations_and_drops_comments() -> None:
    parsed = parse_dockerfile("FROM a AS b\n# note\nRUN one \\\n  # inner\n  two\nUSER 1\n")
    assert [(i.keyword, i.args, i.stage) for i in parsed] == [
        ("FROM", "a AS b", 0),
        ("RUN", "one  two", 0),
        ("USER", "1", 0),
    ]


def test_build_is_multi_stage_from_one_debian_slim_base(instructions: list[Instruction]) -> None:
    bases = [_resolve_args(i.args.split()[0], instructions) for i in instructions if i.keyword == "FROM"]
    assert len(bases) >= 2, f"expected a build stage and a runtime stage, got FROM {bases}"
    assert set(bases) == {"docker.io/library/debian:bookworm-slim"}, (
        f"every stage should start from the Debian base CI can rebuild with debootstrap: {bases}"
    )


def test_base_name_label_is_the_real_base(instructions: list[Instruction]) -> None:
    runtime = _final_stage(instructions)
    assert any(i.keyword == "ARG" and i.args == "BASE_IMAGE" for i in runtime), (
        "the runtime stage must redeclare ARG BASE_IMAGE for the label to see the value in use"
    )
    assert _labels(runtime)["org.opencontainers.image.base.name"] == "${BASE_IMAGE}"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", DOCKERFILE.read_text(), re.MULTILINE)


def test_build_stage_installs_the_lock_with_hashes_then_the_wheel_alone(instructions: list[Instruction]) -> None:
    final = max(i.stage for i in instructions)
    build_runs = " ".join(i.args for i in instructions if i.keyword == "RUN" and 0 <= i.stage < final)
    assert re.search(r"\bpip\b.*\bwheel\b.*--no-deps", build_runs), build_runs
    assert re.search(r"pip install --require-hashes [^&]*--no-deps [^&]*-r deploy/requirements\.lock", build_runs)
    assert re.search(r"pip install --no-deps /wheels/\*\.whl", build_runs)
    assert re.search(r"pip check", build_runs), "pip check proves the lock satisfies the wheel's ranges"


def test_lock_pins_every_requirement_with_a_hash() -> None:
    lock = (REPO / "deploy" / "requirements.lock").read_text()
    requirements = re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\$", lock, re.MULTILINE)
    assert requirements, "the lock pins nothing"
    blocks = re.split(r"^(?=[A-Za-z0-9._-]+==)", lock, flags=re.MULTILINE)[1:]
    for block in blocks:
        assert "--hash=sha256:" in block, f"no hash for {block.splitlines()[0]}"
    pinned = {name.lower().replace("_", "-") for name, _ in requirements}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = (
        project["dependencies"]
        + project["optional-dependencies"]["kubernetes"]
        + project["optional-dependencies"]["auth"]
    )
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pinned, f"{name} (pyproject.toml) is not in deploy/requirements.lock: run bash scripts/lock"


def test_wheel_metadata_keeps_ranges() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        assert "==" not in requirement, f"pin {requirement!r} in deploy/requirements.lock, not in the wheel"


def test_runtime_stage_gets_the_venv_from_the_build_stage_only(instructions: list[Instruction]) -> None:
    names = _stage_names(instructions)
    final = max(i.stage for i in instructions)
    build_names = {name for stage, name in names.items() if stage < final and name} | {
        str(stage) for stage in names if stage < final
    }
    runtime = _final_stage(instructions)
    copies = [i.args for i in runtime if i.keyword in {"COPY", "ADD"}]
    assert copies, "the runtime stage copies nothing from the build stage"
    for args in copies:
        source = re.search(r"--from=(\S+)", args)
        assert source and source.group(1) in build_names, (
            f"the runtime stage copies from the build context ({args!r}): it must receive the venv alone"
        )
    assert not [i.args for i in runtime if i.keyword == "RUN" and re.search(r"\bpip\b", i.args)], (
        "no pip in the runtime stage: it installs nothing from PyPI"
    )


def test_ca_bundle_is_a_secret_mount_never_a_layer(instructions: list[Instruction]) -> None:
    for ins in instructions:
        if ins.keyword in {"COPY", "ADD"}:
            assert "ca-certificates.crt" not in ins.args and "ca-bundle" not in ins.args, ins.args
    pip_runs = [i.args for i in instructions if i.keyword == "RUN" and "pip install" in i.args]
    assert all("--mount=type=secret,id=ca-bundle" in run for run in pip_runs), pip_runs


def test_healthcheck_needs_only_the_images_python(instructions: list[Instruction]) -> None:
    checks = [i.args for i in _final_stage(instructions) if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    command = json.loads(checks[0].split("CMD", 1)[1])
    assert command[:2] == ["python3", "-c"], command
    assert "urllib.request" in command[2] and "HEALTHCHECK_URL" in command[2]
    assert _env(_final_stage(instructions))["HEALTHCHECK_URL"] == "http://127.0.0.1:9789/healthz"


def test_runtime_user_is_numeric_and_not_root(instructions: list[Instruction]) -> None:
    users = [i.args for i in _final_stage(instructions) if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]!r} must be a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"USER {users[-1]!r} group must be numeric, non-root"


def test_entrypoint_is_the_console_script_in_exec_form(instructions: list[Instruction]) -> None:
    entrypoints = [i.args for i in _final_stage(instructions) if i.keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT in the runtime stage"
    assert json.loads(entrypoints[-1]) == ["gpu-carbon-exporter"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "gpu-carbon-exporter" in scripts, "ENTRYPOINT names a console script pyproject.toml does not define"


def test_exposes_the_default_metrics_port(instructions: list[Instruction]) -> None:
    exposed = {
        port.split("/")[0] for i in _final_stage(instructions) if i.keyword == "EXPOSE" for port in i.args.split()
    }
    assert exposed == {"9789"}


def test_nvidia_runtime_mounts_only_nvml(instructions: list[Instruction]) -> None:
    env = _env(_final_stage(instructions))
    assert env.get("NVIDIA_VISIBLE_DEVICES") == "all"
    assert env.get("NVIDIA_DRIVER_CAPABILITIES") == "utility", (
        "capabilities beyond 'utility' would mount CUDA libraries the exporter never uses"
    )


def test_oci_labels(instructions: list[Instruction]) -> None:
    labels = _labels(_final_stage(instructions))
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"missing OCI label org.opencontainers.image.{key}"


def test_dockerignore_sends_only_what_the_wheel_needs() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore should exclude everything first, then re-include"
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "daemon", "deploy/requirements.lock"}, included
