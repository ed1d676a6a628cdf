"""Slurm jobs: workload `slurm/<jobid>`, team from the job's account.

A process whose cgroup says `job_<id>` (see identity/cgroup.py) belongs to Slurm
job <id>. Its account and user come from `scontrol show job --json <id>`
(Slurm >= 21.08), or from the one-line text form `scontrol show job -o <id>` on
older releases, run as a subprocess with a timeout and cached per job id.

`job()` never waits: it answers from the cache (or with the provisional
`slurm/<id>` and the user's team) and queues the lookup for `run()`. Without an
`scontrol` on PATH the source is off (`enabled` False): no lookups, no errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gpucarbon.clock import Clock
from gpucarbon.errors import GpuCarbonError
from gpucarbon.identity import health as reasons
from gpucarbon.identity.health import SourceHealth
from gpucarbon.teams import TeamRules, sanitise_label_value

log = logging.getLogger(__name__)

SOURCE = "slurm"
_JOB_ID = re.compile(r"[0-9]{1,12}")
_OUTPUT_LIMIT = 1024 * 1024  # bytes of scontrol output we are willing to parse
_TEXT_FIELD = re.compile(r"(?:^|\s)(Account|UserId)=(\S*)")
_NOT_FOUND = ("invalid job id", "not found")


@dataclass(frozen=True, slots=True)
class SlurmJobInfo:
    """What scontrol says about a job; empty strings when unknown."""

    job_id: str
    account: str = ""
    user: str = ""


@dataclass(frozen=True, slots=True)
class SlurmJobMeta:
    job_id: str
    workload: str  # "slurm/<jobid>"
    team: str
    account: str = ""
    user: str = ""
    resolved: bool = False  # False: provisional, scontrol not asked or not answered yet


class ScontrolError(GpuCarbonError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def parse_job_json(text: str, job_id: str) -> SlurmJobInfo | None:
    """`scontrol show job --json` output -> the job, None when it lists none.
    Raises ValueError on text that is not the expected JSON."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise ValueError("no 'jobs' list in scontrol JSON")
    for job in data["jobs"]:
        if isinstance(job, dict) and str(job.get("job_id")) == job_id:
            return SlurmJobInfo(job_id, _text(job.get("account")), _text(job.get("user_name") or job.get("user")))
    return None


def parse_job_text(text: str, job_id: str) -> SlurmJobInfo | None:
    """`scontrol show job -o` output: `... UserId=alice(1000) ... Account=physics ...`."""
    if f"JobId={job_id} " not in text + " ":
        return None
    fields: dict[str, str] = {}
    for key, value in _TEXT_FIELD.findall(text):
        fields.setdefault(key, value)
    user = fields.get("UserId", "").split("(", 1)[0]
    account = fields.get("Account", "")
    return SlurmJobInfo(job_id, "" if account == "(null)" else account, user)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


class SlurmSource:
    def __init__(
        self,
        *,
        teams: TeamRules,
        clock: Clock,
        scontrol: str = "scontrol",
        timeout_s: float = 5.0,
        retry_after_s: float = 60.0,
        cache_size: int = 4096,
        which: Callable[[str], str | None] = shutil.which,
    ) -> None:
        self.health = SourceHealth(SOURCE)
        self._teams = teams
        self._clock = clock
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._cache_size = cache_size
        self._scontrol = which(scontrol)
        self._json_supported = True
        self._cache: OrderedDict[str, SlurmJobInfo] = OrderedDict()
        self._failed_at: dict[str, float] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self._scontrol is not None

    # ---- reads: never wait -----------------------------------------------------

    def job(self, job_id: str, user: str | None = None) -> SlurmJobMeta:
        """The job's metadata now; queues a lookup when it is not cached."""
        cached = self._cache.get(job_id)
        if cached is not None:
            # scontrol may not name the user (job purged); the caller's procfs user does.
            merged = SlurmJobInfo(job_id, cached.account, cached.user or user or "")
            return self._meta(merged, resolved=True)
        if self.enabled and _JOB_ID.fullmatch(job_id) and self._lookup_due(job_id):
            self._queue_lookup(job_id)
        return self._meta(SlurmJobInfo(job_id, user=user or ""), resolved=False)

    def team(self, job_id: str) -> str | None:
        """The job's team once scontrol has answered, else None (the lookup is
        queued); the shape identity/resolver.py's SlurmTeams expects."""
        meta = self.job(job_id)
        return meta.team if meta.resolved and meta.account else None

    # ---- lookups ---------------------------------------------------------------

    async def run(self) -> None:
        """Answers queued lookups until cancelled."""
        while True:
            job_id = await self._queue.get()
            try:
                if job_id not in self._cache:
                    await self.lookup(job_id)
            finally:
                self._queued.discard(job_id)  # only now: no second lookup while one runs

    async def lookup(self, job_id: str) -> SlurmJobMeta | None:
        """Asks scontrol now; None when it could not say (the failure is counted)."""
        if not self.enabled or not _JOB_ID.fullmatch(job_id):
            return None
        try:
            info = await self._show_job(job_id)
        except ScontrolError as err:
            self._failed_at[job_id] = self._clock.monotonic()
            if len(self._failed_at) > self._cache_size:
                del self._failed_at[next(iter(self._failed_at))]
            self.health.record_error(err.reason)
            log.warning("slurm: job %s: %s", job_id, err)
            return None
        self.health.mark_up()
        self._failed_at.pop(job_id, None)
        info = info or SlurmJobInfo(job_id)  # not found: finished and purged
        self._store(info)
        return self._meta(info, resolved=True)

    async def _show_job(self, job_id: str) -> SlurmJobInfo | None:
        if self._json_supported:
            code, out, err = await self._run_scontrol("show", "job", "--json", job_id)
            if code == 0:
                try:
                    return parse_job_json(out, job_id)
                except ValueError:
                    pass  # an old scontrol ignored --json: use the text form from now on
            elif _is_not_found(err):
                return None
            self._json_supported = False
        code, out, err = await self._run_scontrol("show", "job", "-o", job_id)
        if code == 0:
            return parse_job_text(out, job_id)
        if _is_not_found(err):
            return None
        raise ScontrolError(reasons.COMMAND_FAILED, f"exit {code}: {err.strip()[:200]}")

    async def _run_scontrol(self, *args: str) -> tuple[int, str, str]:
        assert self._scontrol is not None
        try:
            proc = await asyncio.create_subprocess_exec(
                self._scontrol,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise ScontrolError(reasons.UNAVAILABLE, f"{self._scontrol}: {err}") from None
        try:
            out, errout = await asyncio.wait_for(proc.communicate(), self._timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.communicate()  # reap it and close its pipes
            raise ScontrolError(
                reasons.TIMEOUT, f"{self._scontrol} {' '.join(args)}: over {self._timeout_s}s"
            ) from None
        decode = lambda raw: raw[:_OUTPUT_LIMIT].decode("utf-8", "replace")  # noqa: E731
        return proc.returncode or 0, decode(out), decode(errout)

    def _meta(self, info: SlurmJobInfo, *, resolved: bool) -> SlurmJobMeta:
        return SlurmJobMeta(
            job_id=info.job_id,
            workload=sanitise_label_value(f"slurm/{info.job_id}"),
            team=self._teams.team_for_account(info.account, info.user),
            account=sanitise_label_value(info.account),
            user=sanitise_label_value(info.user),
            resolved=resolved,
        )

    def _lookup_due(self, job_id: str) -> bool:
        failed_at = self._failed_at.get(job_id)
        return failed_at is None or self._clock.monotonic() - failed_at >= self._retry_after_s

    def _queue_lookup(self, job_id: str) -> None:
        if job_id not in self._queued:
            self._queued.add(job_id)
            self._queue.put_nowait(job_id)

    def _store(self, info: SlurmJobInfo) -> None:
        self._cache[info.job_id] = info
        self._cache.move_to_end(info.job_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _is_not_found(stderr: str) -> bool:
    lowered = stderr.lower()
    return any(marker in lowered for marker in _NOT_FOUND)
