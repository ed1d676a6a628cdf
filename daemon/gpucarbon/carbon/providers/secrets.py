"""Credentials for live intensity APIs, read from an environment variable or a
mounted file (a Kubernetes Secret), never from the config file.

A `SecretSource` holds only *where* the secret is; the value is read on each
use so a rotated Secret takes effect without a restart, and it never appears
in a repr, a log line or an exception.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from gpucarbon.errors import GpuCarbonError


class SecretError(GpuCarbonError):
    """The secret cannot be read; the message names where it was looked for."""


@dataclass(frozen=True, slots=True)
class SecretSource:
    what: str  # e.g. "electricitymaps token", for messages
    env: str | None = None
    file: str | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.env and not self.file:
            raise SecretError(f"{self.what}: set an environment variable name (token_env) or a file path (token_file)")

    def describe(self) -> str:
        places = []
        if self.env:
            places.append(f"environment variable {self.env}")
        if self.file:
            places.append(f"file {self.file}")
        return " or ".join(places)

    def read(self) -> str:
        if self.env:
            value = self.environ.get(self.env, "").strip()
            if value:
                return value
        if self.file:
            try:
                with open(self.file, encoding="utf-8") as handle:
                    value = handle.read().strip()
            except OSError as error:
                raise SecretError(
                    f"{self.what}: cannot read file {self.file} ({error.strerror or type(error).__name__})"
                ) from None
            if value:
                return value
        raise SecretError(f"{self.what}: nothing found in {self.describe()}")
