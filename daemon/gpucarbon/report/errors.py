"""The report's errors. Each str() is one line; cli.py prints it and exits with
`exit_code` (1: the store cannot answer the report, 2: bad usage)."""

from __future__ import annotations

from gpucarbon.errors import GpuCarbonError


class ReportError(GpuCarbonError):
    """Base of every error the report command raises on purpose."""

    exit_code = 1


class UsageError(ReportError):
    """A bad flag value or an invalid --http.config.file (names flag or key, and value)."""

    exit_code = 2


class Unreachable(ReportError):
    """The store did not answer (connection refused, DNS, TLS, timeout)."""


class StoreError(ReportError):
    """The store answered with an error (HTTP status, PromQL error, bad JSON)."""


class MetricsAbsent(ReportError):
    """No gpucarbon_* series in the range: the daemon is not scraped by this store."""


class RulesMissing(ReportError):
    """The daemon's metrics are there but the recording rules the report reads are not."""


class NoData(ReportError):
    """Rules and metrics exist, but the range holds no energy."""
