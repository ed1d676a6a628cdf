"""The one exception tree. Every error the command line reports derives from
GpuCarbonError, so cli.py catches it once and prints its one line (exit 2).

Faults the daemon survives at run time (a GPU read failing, a carbon API down)
derive from it too, so a caller can tell the daemon's own errors from bugs.
"""

from __future__ import annotations


class GpuCarbonError(Exception):
    """Base of every error this package raises on purpose; str() is one line."""

    #: True when the message names a key of the config file but not the file:
    #: the command line prefixes the file's path.
    in_config_file = False


class SetupError(GpuCarbonError):
    """The configuration cannot be put into effect (one line, names the key)."""


class ListenError(GpuCarbonError):
    """--web.listen-address cannot be served (one line naming flag and value).
    exit_code: 2 when the value is wrong (no such host, not an address of this
    machine), 1 when the machine refuses it (port in use, not permitted)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def require_extra(module: str, setting: str, extra: str) -> None:
    """A clear setup error when an optional dependency is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise SetupError(f"{setting} needs the {module} package: pip install 'gpu-carbon-exporter[{extra}]'")
