"""Command line, in the Prometheus exporter conventions.

Exit codes: 0 ok; 1 --once found no working GPU backend, or the listen port is
taken; 2 bad flags or config, or a listen address that names no local address.
Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from gpucarbon import __version__
from gpucarbon.app import Daemon, RunOptions, build_daemon, run_once, serve
from gpucarbon.config import load_config, parse_duration
from gpucarbon.errors import GpuCarbonError, ListenError
from gpucarbon.exporter.http import AuthFailures, parse_listen_address
from gpucarbon.simulation.scenario import DEMO, load_scenario

PROG = "gpu-carbon-exporter"

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
        if record.exc_info:
            line += ' exc="' + self.formatException(record.exc_info).replace("\n", "\\n").replace('"', "'") + '"'
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))


PROBE_PATHS = frozenset({"/healthz", "/readyz"})  # kubelet probes cannot send credentials


def _web_security(path: str | None, auth_failures: AuthFailures) -> tuple[tuple, object]:
    """Middlewares and TLS context from --web.config.file (WebConfigError if bad)."""
    if path is None:
        return (), None
    from gpucarbon.exporter.webconfig import auth_middleware, load_web_config

    web_config = load_web_config(path)
    for note in web_config.notes:
        log.info("web config: %s", note)
    middleware = auth_middleware(web_config, exempt_paths=PROBE_PATHS, on_failure=auth_failures.record)
    return (middleware,), web_config.ssl_context()


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
    parser = build_parser()
    args = parser.parse_args(_attach_dash_values(parser, sys.argv[1:] if argv is None else list(argv)))
    setup_logging(args.log_level, args.log_format)
    try:
        daemon, middlewares, ssl_context, auth_failures = _build(args)
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
        return asyncio.run(serve(daemon, middlewares, ssl_context, auth_failures))
    except KeyboardInterrupt:
        return 0
    except ListenError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.exit_code


def _build(args: argparse.Namespace) -> tuple[Daemon, tuple, object, AuthFailures]:
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
    )
    auth_failures = AuthFailures()
    middlewares, ssl_context = _web_security(args.web_config, auth_failures)
    return build_daemon(config, options), middlewares, ssl_context, auth_failures
