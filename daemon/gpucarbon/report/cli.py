"""`gpu-carbon-exporter report ...`: flags -> ReportRequest -> Report -> text.

Exit codes: 0 written; 1 the store cannot answer (unreachable, metrics or rules
absent, no data); 2 bad usage. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import NoReturn, TextIO

from gpucarbon.report.client import HttpConfig, PromClient, load_http_config, read_secret_file
from gpucarbon.report.errors import ReportError, UsageError
from gpucarbon.report.gather import Gatherer, ReportRequest
from gpucarbon.report.receipts import summarize
from gpucarbon.report.render import FORMATS, renderer

PROG = "gpu-carbon-exporter report"
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def prometheus_duration(text: str) -> float:
    """A Prometheus duration ('30d', '1w2d', '90m') in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r}: not a Prometheus duration (examples: 30d, 1w, 12h)")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if not 0 < seconds <= 10 * 31536000:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 1ms and 10y")
    return float(seconds)


def timestamp(text: str) -> float:
    """RFC 3339 ('2026-11-30T00:00:00Z') or Unix seconds."""
    try:
        value = float(text)
    except ValueError:
        return _rfc3339(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: not a Unix time")
    return value


def _rfc3339(text: str) -> float:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not RFC 3339 or Unix seconds") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: RFC 3339 needs a time zone (Z or +hh:mm)")
    return parsed.timestamp()


def _price(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a non-negative number")
    return value


def _metric_name(text: str) -> str:
    if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        raise argparse.ArgumentTypeError(f"{text!r}: not a metric name")
    return text


def _url(text: str) -> str:
    if not re.match(r"^https?://[^/\s]+", text):
        raise argparse.ArgumentTypeError(f"{text!r}: must be an http:// or https:// URL")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="A period's GPU energy, emissions, cost and waste per team, namespace or "
        "workload, read from Prometheus (or Thanos, Mimir, VictoriaMetrics) and from receipts.",
    )
    p.add_argument(
        "--prometheus.url",
        dest="url",
        required=True,
        type=_url,
        help="base URL of the Prometheus HTTP API, e.g. http://prometheus:9090",
    )
    p.add_argument(
        "--range",
        dest="range_s",
        type=prometheus_duration,
        default=30 * 86400.0,
        help="length of the period, a Prometheus duration (default 30d)",
    )
    p.add_argument(
        "--end", type=timestamp, default=None, help="end of the period, RFC 3339 or Unix seconds (default now)"
    )
    p.add_argument("--by", choices=("team", "namespace", "workload"), default="team", help="grouping (default team)")
    p.add_argument(
        "--receipts",
        nargs="+",
        action="extend",
        default=None,
        metavar="PATH",
        help="receipts.jsonl files or directories collected from the nodes",
    )
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("--output", default=None, metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument(
        "--offset-price",
        dest="offset_price",
        type=_price,
        default=None,
        metavar="PRICE",
        help="price of offsetting one tonne CO2e, in the cost currency (default: no offset cost)",
    )
    p.add_argument(
        "--tokens.metric",
        dest="tokens_metric",
        type=_metric_name,
        default="vllm:generation_tokens_total",
        help="counter of generated tokens, with namespace and pod labels, for energy per token "
        "(default vllm:generation_tokens_total)",
    )
    p.add_argument(
        "--query.timeout",
        dest="timeout",
        type=prometheus_duration,
        default=120.0,
        help="timeout of each HTTP request (default 2m)",
    )
    auth = p.add_argument_group("authentication and TLS (as promtool and amtool)")
    auth.add_argument(
        "--http.config.file",
        dest="http_config",
        default=None,
        metavar="FILE",
        help="Prometheus HTTP client config: basic_auth, authorization, bearer_token_file, tls_config",
    )
    auth.add_argument("--basic-auth.username", dest="username", default=None)
    auth.add_argument("--basic-auth.password-file", dest="password_file", default=None, metavar="FILE")
    auth.add_argument("--bearer-token-file", dest="token_file", default=None, metavar="FILE")
    auth.add_argument("--tls.ca-file", dest="ca_file", default=None, metavar="FILE")
    auth.add_argument("--tls.cert-file", dest="cert_file", default=None, metavar="FILE")
    auth.add_argument("--tls.key-file", dest="key_file", default=None, metavar="FILE")
    auth.add_argument("--tls.insecure-skip-verify", dest="insecure", action="store_true")
    return p


def http_config(args: argparse.Namespace) -> HttpConfig:
    """The file's settings, then the flags on top (a flag wins)."""
    values = load_http_config(args.http_config) if args.http_config else {}
    if args.username is not None:
        values["username"] = args.username
        values["password"] = (
            read_secret_file(args.password_file, "--basic-auth.password-file") if args.password_file else None
        )
    elif args.password_file:
        raise UsageError("--basic-auth.password-file needs --basic-auth.username")
    if args.token_file:
        values["bearer_token"] = read_secret_file(args.token_file, "--bearer-token-file")
    if values.get("username") is not None and values.get("bearer_token") is not None:
        raise UsageError("basic auth and a bearer token are mutually exclusive")
    for flag, key in (("ca_file", "ca_file"), ("cert_file", "cert_file"), ("key_file", "key_file")):
        path = getattr(args, flag)
        if path is not None:
            if not Path(path).is_file():
                raise UsageError(f"--tls.{flag.replace('_', '-')} {path}: no such file")
            values[key] = path
    if args.insecure:
        values["insecure_skip_verify"] = True
    if bool(values.get("cert_file")) != bool(values.get("key_file")):
        raise UsageError("a TLS client certificate needs both --tls.cert-file and --tls.key-file")
    return HttpConfig(**values)


class Progress:
    """'[3] energy per team (4.1s)' on one rewritten stderr line, only on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._steps = 0

    def __call__(self, step: str) -> None:
        self._steps += 1
        elapsed = time.monotonic() - self._started
        self._stream.write(f"\r\033[K[{self._steps}] {step} ({elapsed:.1f}s)")
        self._stream.flush()

    def done(self) -> None:
        if self._steps:
            self._stream.write("\r\033[K")
            self._stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ReportError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    end = args.end if args.end is not None else time.time()
    start = end - args.range_s
    render = renderer(args.format)
    if args.format == "html":
        from gpucarbon.report.render.html import require_plotly

        require_plotly()  # before minutes of queries, not after
    client = PromClient(args.url, http_config(args), timeout_s=args.timeout)
    receipts = summarize(args.receipts, start, end) if args.receipts else None
    request = ReportRequest(
        start=start,
        end=end,
        by=args.by,
        offset_price_per_tonne=args.offset_price,
        receipts=receipts,
        tokens_metric=args.tokens_metric,
    )
    progress = Progress(sys.stderr) if args.format == "table" and sys.stderr.isatty() else None
    try:
        report = Gatherer(client, request, progress or (lambda step: None)).report()
    finally:
        if progress is not None:
            progress.done()
    text = render(report)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as err:
            raise UsageError(f"--output {args.output}: cannot write: {err.strerror}") from None
    else:
        sys.stdout.write(text)
    return 0
