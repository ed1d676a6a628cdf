"""A Slurm job's end, from `scontrol show job` once its processes left the GPUs.

`facts()` never waits: it answers from what the last lookup said and queues a
lookup (run by `run()` in its own task) when there is none or it is older than
`recheck_s`. Once the job is in a final state the answer is kept. A job that
scontrol no longer knows (purged after MinJobAge) gets no answer, so the
tracker writes it as `unknown` after its grace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from gpucarbon.receipts.fingerprint import slurm_fingerprint
from gpucarbon.receipts.model import RunFacts
from gpucarbon.receipts.outcome import slurm_exit_code, slurm_outcome
from gpucarbon.receipts.tracker import STILL_RUNNING, RunRef

log = logging.getLogger(__name__)

# (stdout, json?) of `scontrol show job [--json|-o] <id>`; None: not found.
ShowJob = Callable[[str], Awaitable[tuple[str, bool] | None]]
_TEXT_FIELD = re.compile(r"(?:^|\s)(JobState|ExitCode|JobName|Command|WorkDir|UserId|Account)=(\S*)")


def parse_job_end(text: str, is_json: bool, job_id: str) -> RunFacts | None:
    """RunFacts when the job is in a final state; None while it runs or when
    the output does not list it (ValueError on malformed JSON)."""
    fields = _json_fields(text, job_id) if is_json else _text_fields(text, job_id)
    if fields is None:
        return None
    outcome, reason = slurm_outcome(fields["state"])
    if outcome == "unknown":
        return None
    return RunFacts(
        outcome=outcome,
        reason=reason,
        exit_code=slurm_exit_code(fields["exit"]),
        fingerprint=slurm_fingerprint(fields["name"], fields["command"], fields["workdir"]),
        job_id=job_id,
        user=fields["user"],
        account=fields["account"],
    )


def _json_fields(text: str, job_id: str) -> dict | None:
    data = json.loads(text)
    for job in data.get("jobs") or ():
        if str(job.get("job_id")) != job_id:
            continue
        state = job.get("job_state")
        state = state[0] if isinstance(state, list) and state else state
        return {
            "state": state if isinstance(state, str) else "",
            "exit": job.get("exit_code"),
            "name": _s(job.get("name")),
            "command": _s(job.get("command")),
            "workdir": _s(job.get("current_working_directory")),
            "user": _s(job.get("user_name")),
            "account": _s(job.get("account")),
        }
    return None


def _text_fields(text: str, job_id: str) -> dict | None:
    if f"JobId={job_id} " not in text + " ":
        return None
    found: dict[str, str] = {}
    for key, value in _TEXT_FIELD.findall(text):
        found.setdefault(key, value)
    return {
        "state": found.get("JobState", ""),
        "exit": found.get("ExitCode"),
        "name": found.get("JobName", ""),
        "command": found.get("Command", ""),
        "workdir": found.get("WorkDir", ""),
        "user": found.get("UserId", "").split("(", 1)[0],
        "account": found.get("Account", ""),
    }


def _s(value: object) -> str:
    return value if isinstance(value, str) else ""


class SlurmRunStatus:
    def __init__(
        self, show_job: ShowJob, monotonic: Callable[[], float], recheck_s: float = 30.0, cache_size: int = 4096
    ) -> None:
        self._show_job = show_job
        self._monotonic = monotonic
        self._recheck_s = recheck_s
        self._cache_size = cache_size
        self._ended: OrderedDict[str, RunFacts] = OrderedDict()
        self._last: dict[str, tuple[str, float]] = {}  # job -> ("running" | "unknown", monotonic s)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()

    def facts(self, run: RunRef):
        if run.kind != "slurm":
            return None
        ended = self._ended.get(run.run_id)
        if ended is not None:
            return ended
        last = self._last.get(run.run_id)
        if (last is None or self._monotonic() - last[1] >= self._recheck_s) and run.run_id not in self._queued:
            self._queued.add(run.run_id)
            self._queue.put_nowait(run.run_id)
        return STILL_RUNNING if last is not None and last[0] == "running" else None

    async def run(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self.lookup(job_id)
            finally:
                self._queued.discard(job_id)

    async def lookup(self, job_id: str) -> None:
        """Ask scontrol once; a failure or a purged job is 'unknown' until the next ask."""
        now = self._monotonic()
        try:
            answer = await self._show_job(job_id)
            facts = parse_job_end(answer[0], answer[1], job_id) if answer is not None else None
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - scontrol failing leaves the job to the grace rule
            log.warning("receipts: slurm job %s: %s", job_id, err)
            self._remember(job_id, "unknown", now)
            return
        if facts is not None:
            self._ended[job_id] = facts
            self._last.pop(job_id, None)
            while len(self._ended) > self._cache_size:
                self._ended.popitem(last=False)
            return
        self._remember(job_id, "running" if answer is not None else "unknown", now)

    def _remember(self, job_id: str, state: str, now: float) -> None:
        self._last[job_id] = (state, now)
        while len(self._last) > self._cache_size:
            del self._last[next(iter(self._last))]
