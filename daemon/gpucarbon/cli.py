"""Command line, in the Prometheus exporter conventions.

`gpu-carbon-exporter report ...` hands over to gpucarbon.report.cli.

Exit codes: 0 ok; 1 --once found no working GPU backend, or the listen port is
taken; 2 bad flags or config, or a listen address that names no local address.
Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from gpucarbon import __version__
from gpucarbon.app import Daemon, RunOptions, build_daemon, run_once, serve
from gpucarbon.config import load_config, parse_duration
from gpucarbon.errors import GpuCarbonError, ListenError
from gpucarbon.exporter.http import AuthFailures, parse_listen_address
from gpucarbon.simulation.scenario import DEMO, load_scenario

if TYPE_CHECKING:
    from gpucarbon.exporter.webconfig import WebConfig

PROG = "gpu-carbon-exporter"
PROBE_PATHS = frozenset({"/healthz", "/readyz"})  # kubelet probes cannot send credentials
RESERVED_PATHS = {
    "/healthz": "the liveness probe path (served without basic auth)",
    "/readyz": "the readiness probe path (served without basic auth)",
    "/": "the landing page",
}

log = logging.getLogger(__name__)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: {message} (see --help)\n")


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
    return seconds


def _address(text: str) -> str:
    try:
        parse_listen_address(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    return text


def _telemetry_path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r}: must start with /")
    if any(ch in text for ch in "?#") or any(ord(ch) < 0x21 for ch in text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be a plain path (no query, fragment, spaces or control characters)"
        )
    if text in RESERVED_PATHS:
        # Probe paths are served without basic auth: metrics there would be open.
        raise argparse.ArgumentTypeError(f"{text!r}: collides with {RESERVED_PATHS[text]}; choose another path")
    return text


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
    if not 0.001 <= value <= 1e6:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 0.001 and 1000000")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog=PROG,
        description="Export GPU energy, attributed to workloads and teams, "
        "and its carbon emissions as Prometheus metrics.",
        epilog="`gpu-carbon-exporter report --help`: a period's energy, emissions, cost and waste per team, "
        "read from Prometheus.",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=":9789",
        type=_address,
        help="address to serve metrics on (default :9789)",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        type=_telemetry_path,
        help="path of the metrics endpoint (default /metrics)",
    )
    p.add_argument(
        "--web.config.file", dest="web_config", default=None, help="exporter-toolkit web config (TLS, basic auth)"
    )
    p.add_argument("--config.file", dest="config_file", default=None, help="YAML configuration file")
    p.add_argument(
        "--simulate",
        nargs="?",
        const=DEMO,
        default=None,
        metavar="SCENARIO",
        help="use the simulated GPU backend; without a file, the built-in demo scenario",
    )
    p.add_argument(
        "--simulate.speed",
        dest="speed",
        type=_speed,
        default=None,
        help="simulated seconds per real second (overrides the scenario)",
    )
    p.add_argument(
        "--simulate.serving-address",
        dest="serving_address",
        type=_address,
        default=None,
        help="also serve the simulated serving engines' counters (vLLM, SGLang, TGI, Triton) on this address, "
        "e.g. :9790 (default: off)",
    )
    p.add_argument(
        "--once", action="store_true", help="poll, wait one interval, poll again, print the metrics and exit"
    )
    p.add_argument("--path.procfs", dest="procfs", default="/proc", help="procfs mount point (default /proc)")
    p.add_argument(
        "--poll.interval", dest="poll_interval", default=1.0, type=_duration, help="time between polls (default 1s)"
    )
    p.add_argument(
        "--state.dir", dest="state_dir", default=None, help="directory for counter checkpoints (default: off)"
    )
    p.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warn", "error"])
    p.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace('"', '\\"').replace("\n", " ")
        line = (
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} "
            f'logger={record.name} msg="{msg}"'
        )
        for key, value in (getattr(record, "fields", None) or {}).items():  # structured lines (receipts)
            line += f" {key}={_logfmt_value(value)}"
        if record.exc_info:
            line += ' exc="' + self.formatException(record.exc_info).replace("\n", "\\n").replace('"', "'") + '"'
        return line


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\') and text.isprintable():
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        receipt = getattr(record, "receipt", None)
        if receipt is not None:  # the whole receipt, as one JSON object
            entry["receipt"] = receipt
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))


@dataclass(frozen=True)
class _WebSecurity:
    """What --web.config.file turns into for the listener."""

    middlewares: tuple = ()
    ssl_context: object = None
    headers: dict[str, str] = field(default_factory=dict)  # also on the server's own 400s
    certificate_expiry: float | None = None  # Unix s, exported as a gauge


def _web_security(path: str | None, auth_failures: AuthFailures) -> _WebSecurity:
    """Middlewares, TLS context and headers from --web.config.file (WebConfigError if bad)."""
    if path is None:
        return _WebSecurity()
    from gpucarbon.exporter.webconfig import auth_middleware, load_web_config

    web_config = load_web_config(path)
    for note in web_config.notes:
        log.info("web config: %s", note)
    middleware = auth_middleware(web_config, exempt_paths=PROBE_PATHS, on_failure=auth_failures.record)
    return _WebSecurity((middleware,), web_config.ssl_context(), dict(web_config.headers), _web_warnings(web_config))


def _web_warnings(web_config: WebConfig) -> float | None:
    """Once at start: a web config with password hashes that every user can
    read, and a certificate that has expired or expires within 14 days.
    Returns the certificate's expiry (exported as a gauge), if there is one."""
    from gpucarbon.exporter.certificate import CertificateError, CertificateExpiry
    from gpucarbon.fileperms import warn_if_world_readable

    if web_config.auth_enabled and web_config.path is not None:
        warn_if_world_readable(web_config.path, "--web.config.file", "basic auth password hashes")
    if web_config.tls is None:
        return None
    try:
        return CertificateExpiry(web_config.tls.cert_file).expires_at
    except (CertificateError, OSError, ValueError) as err:
        log.warning("cannot read the expiry of %s: %s", web_config.tls.cert_file, err)
        return None


def _attach_dash_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """`--poll.interval -1s` -> `--poll.interval=-1s`: argparse takes any word
    starting with '-' for a flag and would answer "expected one argument";
    attached, the value reaches the flag's own check, which names flag and value."""
    takes_value = {
        flag
        for action in parser._actions
        if isinstance(action, argparse._StoreAction) and action.nargs is None
        for flag in action.option_strings
    }
    known = set(parser._option_string_actions)
    out: list[str] = []
    i = 0
    while i < len(argv):
        word, following = argv[i], argv[i + 1] if i + 1 < len(argv) else None
        if (
            word in takes_value
            and following is not None
            and following.startswith("-")
            and following != "--"
            and following.split("=", 1)[0] not in known
        ):
            out.append(f"{word}={following}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:  # the report subcommand has its own flags (gpucarbon/report/cli.py)
        from gpucarbon.report.cli import main as report_main

        return report_main(argv[1:])
    # Until serve() installs its handler, a SIGHUP (its default action ends the
    # process) must not kill a daemon that is still restoring its checkpoint.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parser = build_parser()
    args = parser.parse_args(_attach_dash_values(parser, argv))
    setup_logging(args.log_level, args.log_format)
    try:
        daemon, web, auth_failures = _build(args)
    except GpuCarbonError as err:
        where = f"{args.config_file}: " if err.in_config_file and args.config_file else ""
        print(f"{PROG}: {where}{err}", file=sys.stderr)
        return 2
    try:
        if args.once:
            code, text = asyncio.run(run_once(daemon))
            if code:
                print(f"{PROG}: {text}", file=sys.stderr)
            else:
                sys.stdout.write(text)
            return code
        return asyncio.run(
            serve(daemon, web.middlewares, web.ssl_context, auth_failures, web.headers, web.certificate_expiry)
        )
    except KeyboardInterrupt:
        return 0
    except ListenError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.exit_code


def _build(args: argparse.Namespace) -> tuple[Daemon, _WebSecurity, AuthFailures]:
    """Everything the command line asks for, built; raises GpuCarbonError."""
    config = load_config(args.config_file)
    scenario = load_scenario(args.simulate) if args.simulate is not None else None
    options = RunOptions(
        listen_address=args.listen_address,
        telemetry_path=args.telemetry_path,
        poll_interval_s=args.poll_interval,
        procfs=args.procfs,
        scenario=scenario,
        speed=args.speed,
        state_dir=args.state_dir,
        serving_address=args.serving_address,
    )
    auth_failures = AuthFailures()
    web = _web_security(args.web_config, auth_failures)
    return build_daemon(config, options), web, auth_failures
