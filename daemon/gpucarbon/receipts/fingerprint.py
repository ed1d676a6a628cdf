"""What makes two runs the same computation, as one SHA-256.

Hashed (canonical JSON, sorted keys), and nothing else:
  pod:   for each container of the spec, sorted by name: its name, its image
         digest (`imageID` from the pod status: the bytes that ran, not a tag
         that can move; the image reference when no digest is known), its
         `command` and its `args`;
  slurm: the job name, its command (the batch script path or srun command line)
         and its working directory;
  simulation: the scenario's `image` and `command`.
Never environment variables, volumes, secrets, labels or annotations: two runs
that differ only there are the same computation, and a secret never leaves the
node inside a hash input. Plain processes get no fingerprint (a command name
alone would make every `python` run a repeat of every other).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from gpucarbon.receipts.model import Fingerprint


def _digest(kind: str, parts: Any) -> str:
    text = json.dumps({"kind": kind, "parts": parts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def image_digest(image_id: str, image: str) -> str:
    """`docker-pullable://reg/x@sha256:ab..` or `reg/x@sha256:ab..` -> `sha256:ab..`;
    without a digest, the image reference itself."""
    if "@" in image_id:
        return image_id.rsplit("@", 1)[1]
    if image_id.startswith("sha256:"):
        return image_id
    return image


def pod_fingerprint(pod: Mapping[str, Any]) -> Fingerprint | None:
    spec_containers = (pod.get("spec") or {}).get("containers") or ()
    if not spec_containers:
        return None
    statuses = {s.get("name"): s for s in ((pod.get("status") or {}).get("containerStatuses") or ())}
    parts = []
    for container in sorted(spec_containers, key=lambda c: c.get("name") or ""):
        status = statuses.get(container.get("name")) or {}
        parts.append(
            {
                "name": container.get("name") or "",
                "image_digest": image_digest(status.get("imageID") or "", container.get("image") or ""),
                "command": list(container.get("command") or ()),
                "args": list(container.get("args") or ()),
            }
        )
    return Fingerprint(_digest("pod", parts), ("container name", "image digest", "command", "args"))


def slurm_fingerprint(name: str, command: str, workdir: str) -> Fingerprint | None:
    if not (name or command):
        return None
    return Fingerprint(
        _digest("slurm", {"name": name, "command": command, "workdir": workdir}),
        ("job name", "command", "working directory"),
    )


def simulated_fingerprint(image: str | None, command: Sequence[str] | None) -> Fingerprint | None:
    if not image and not command:
        return None
    return Fingerprint(
        _digest("pod", [{"name": "sim", "image_digest": image or "", "command": list(command or ()), "args": []}]),
        ("image", "command"),
    )
