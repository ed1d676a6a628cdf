"""Slurm jobs: workload `slurm/<jobid>`, team from the job's account, and the
GPUs each job holds on this node.

A process whose cgroup says `job_<id>` (see identity/cgroup.py) belongs to Slurm
job <id>. Its account, user, partition, name, state and per-node GPU indices come
from `scontrol -d show job --json <id>` (the `--json` option exists from Slurm
23.02), or from the text form `scontrol -d -o show job <id>` on older releases,
run as a subprocess with a timeout and cached per job id.

`job()` never waits: it answers from the cache (or with the provisional
`slurm/<id>` and the user's team) and queues the lookup for `run()`. Without an
`scontrol` on PATH the source is off (`enabled` False): no lookups, no errors.

A miss is never cached for good: `"jobs": []` with exit 0 (Slurm 23.11-25.05 can
answer so when the controller has nothing loaded) for a job whose processes are
running is a source error, and a job scontrol does not know is asked about again
after `retry_after_s`.

`SlurmAllocations` turns the jobs on this node (their cgroup directories) into
GPU holders, by each job's GPU indices for this node. Slurm's index follows the
device file /dev/nvidiaN, so it is matched to the GPU's minor number, not to
NVML's (PCI-ordered) index; a job holding an idle GPU then pays its idle draw.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpucarbon.clock import Clock
from gpucarbon.device.model import GpuReading
from gpucarbon.errors import GpuCarbonError
from gpucarbon.identity import health as reasons
from gpucarbon.identity.health import SourceHealth
from gpucarbon.identity.model import Consumer
from gpucarbon.teams import TeamRules, sanitise_label_value

log = logging.getLogger(__name__)

SOURCE = "slurm"
_JOB_ID = re.compile(r"[0-9]{1,12}")
_OUTPUT_LIMIT = 1024 * 1024  # bytes of scontrol output we are willing to parse
_TEXT_FIELD = re.compile(r"(?:^|\s)(Account|UserId|Partition|JobName|JobState)=(\S*)")
_NOT_FOUND = ("invalid job id", "not found")
EMPTY_ANSWER = "empty_answer"  # health reason: exit 0 with no job for a running job
# `scontrol -d` per-node detail: "Nodes=node-06 CPU_IDs=10-11 Mem=81920 GRES_IDX=gpu(IDX:0,2-3,5)"
# (Slurm < 19.05) or "... GRES=gpu:a100:4(IDX:0-3)" (later); one-line (-o) or indented.
_NODE_DETAIL = re.compile(r"(?<![\w/])Nodes=(\S+)\s+CPU_IDs=\S*\s+Mem=\S*\s+(?:GRES_IDX|GRES)=(\S*)")
# One GPU GRES entry with its indices: gpu(IDX:5), gpu:1(IDX:3), gpu:rtx2080:1(IDX:1);
# other GRES (gg:g0(CNT:1), mps:10) do not match.
_GPU_IDX = re.compile(r"(?:^|,)gpu(?::[^(),]*)*\(IDX:([0-9,\-]*)\)")
_MAX_GPU_INDEX = 1023  # more GPUs than any node has: a corrupt answer, not a range to expand


@dataclass(frozen=True, slots=True)
class SlurmJobInfo:
    """What scontrol says about a job; empty strings when unknown."""

    job_id: str
    account: str = ""
    user: str = ""
    partition: str = ""
    name: str = ""
    state: str = ""  # e.g. RUNNING, COMPLETING
    gpus_by_node: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # node -> GPU indices
    found: bool = True  # False: scontrol did not know the job (finished and purged)

    def gpus_on(self, node: str) -> tuple[int, ...]:
        """This job's GPU indices on `node`; a one-node job's whatever the name
        (Slurm's NodeName need not be the host name)."""
        if node in self.gpus_by_node:
            return self.gpus_by_node[node]
        if len(self.gpus_by_node) == 1:
            return next(iter(self.gpus_by_node.values()))
        return ()


@dataclass(frozen=True, slots=True)
class SlurmJobMeta:
    job_id: str
    workload: str  # "slurm/<jobid>"
    team: str
    account: str = ""
    user: str = ""
    resolved: bool = False  # False: provisional, scontrol not asked or not answered yet
    partition: str = ""
    name: str = ""
    state: str = ""


class ScontrolError(GpuCarbonError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def parse_job_json(text: str, job_id: str) -> SlurmJobInfo | None:
    """`scontrol -d show job --json` output -> the job, None when it lists none.
    Raises ValueError on text that is not the expected JSON.

    `gres_detail` holds one entry per allocated node, in the order of the
    expanded `nodes` host list. `job_state` is a string up to data_parser
    v0.0.39 (Slurm 23.02) and a list of flags from v0.0.40."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise ValueError("no 'jobs' list in scontrol JSON")
    for job in data["jobs"]:
        if isinstance(job, dict) and str(job.get("job_id")) == job_id:
            return SlurmJobInfo(
                job_id,
                _text(job.get("account")),
                _text(job.get("user_name") or job.get("user")),
                partition=_text(job.get("partition")),
                name=_text(job.get("name")),
                state=_state(job.get("job_state")),
                gpus_by_node=_json_gpus(job),
            )
    return None


def parse_job_text(text: str, job_id: str) -> SlurmJobInfo | None:
    """`scontrol -d show job [-o]` output: `JobId=4243 JobName=sweep UserId=bob(1001)
    ... Account=vision ... JobState=RUNNING ... Partition=gpu ... Nodes=n1 CPU_IDs=0-7
    Mem=0 GRES=gpu:a100:4(IDX:0-3)`. The first occurrence of a key wins (Command=
    may repeat one later)."""
    if f"JobId={job_id} " not in text.replace("\n", " ") + " ":
        return None
    fields: dict[str, str] = {}
    for key, value in _TEXT_FIELD.findall(text):
        fields.setdefault(key, value)
    user = fields.get("UserId", "").split("(", 1)[0]
    account = fields.get("Account", "")
    gpus: dict[str, tuple[int, ...]] = {}
    for nodes, gres in _NODE_DETAIL.findall(text):
        indices = gpu_indices(gres)
        for node in expand_hostlist(nodes):
            gpus[node] = tuple(sorted(set(gpus.get(node, ()) + indices)))
    return SlurmJobInfo(
        job_id,
        _null(account),
        user,
        partition=_null(fields.get("Partition", "")),
        name=_null(fields.get("JobName", "")),
        state=fields.get("JobState", ""),
        gpus_by_node={n: g for n, g in gpus.items() if g},
    )


def gpu_indices(gres: str) -> tuple[int, ...]:
    """GPU indices in one node's GRES detail: 'gpu:a100:2(IDX:0,2),gpu:v100:1(IDX:4),mps:10'
    -> (0, 2, 4). Raises ValueError on a malformed index list."""
    found: set[int] = set()
    for ranges in _GPU_IDX.findall(gres):
        found.update(expand_indices(ranges))
    return tuple(sorted(found))


def expand_indices(ranges: str) -> tuple[int, ...]:
    """'0,2-3,5' -> (0, 2, 3, 5); '' -> ()."""
    result: list[int] = []
    for part in filter(None, ranges.split(",")):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if not 0 <= first <= last <= _MAX_GPU_INDEX:
            raise ValueError(f"GPU index range out of bounds: {part!r}")
        result.extend(range(first, last + 1))
    return tuple(result)


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm host list -> names: 'node-[63-65],gpu[01-02,07]' -> node-63 .. gpu07
    (zero padding kept; several bracket groups expand as a product)."""
    names: list[str] = []
    for item in _split_outside_brackets(hostlist):
        names.extend(_expand_one(item))
    return names


def _split_outside_brackets(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [i for i in items if i]


def _expand_one(item: str) -> list[str]:
    match = re.match(r"([^\[]*)\[([^\]]*)\](.*)", item)
    if match is None:
        return [item]
    prefix, ranges, rest = match.groups()
    heads: list[str] = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        width = len(low)
        heads.extend(f"{prefix}{n:0{width}d}" for n in range(int(low), int(high or low) + 1))
    return [head + tail for head in heads for tail in _expand_one(rest)] if rest else heads


def _json_gpus(job: dict) -> dict[str, tuple[int, ...]]:
    detail = job.get("gres_detail")
    nodes = job.get("nodes")
    if not isinstance(detail, list) or not isinstance(nodes, str):
        return {}
    gpus = {}
    # One gres_detail entry per node; a short or long list pairs what it can.
    for node, gres in zip(expand_hostlist(nodes), detail, strict=False):
        indices = gpu_indices(gres) if isinstance(gres, str) else ()
        if indices:
            gpus[node] = indices
    return gpus


def _state(value: object) -> str:
    if isinstance(value, list):  # data_parser v0.0.40+: ["RUNNING", <flags>...]
        return _text(value[0]) if value else ""
    return _text(value)


def _null(value: str) -> str:
    return "" if value == "(null)" else value


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
        self._missed_at: dict[str, float] = {}  # job -> when scontrol last did not know it
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
        if cached is not None and not cached.found and self._miss_expired(job_id):
            self._queue_lookup(job_id)  # a miss is asked about again; the answer stands meanwhile
        if cached is not None:
            # scontrol may not name the user (job purged); the caller's procfs user does.
            merged = SlurmJobInfo(
                job_id,
                cached.account,
                cached.user or user or "",
                cached.partition,
                cached.name,
                cached.state,
                cached.gpus_by_node,
                cached.found,
            )
            return self._meta(merged, resolved=True)
        if self.enabled and _JOB_ID.fullmatch(job_id) and self._lookup_due(job_id):
            self._queue_lookup(job_id)
        return self._meta(SlurmJobInfo(job_id, user=user or ""), resolved=False)

    def info(self, job_id: str) -> SlurmJobInfo | None:
        """What scontrol last said about the job (None: not asked or not
        answered yet; a lookup is queued)."""
        self.job(job_id)
        return self._cache.get(job_id)

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
                cached = self._cache.get(job_id)
                if cached is None or not cached.found:
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
        if info is None:  # not found: finished and purged, asked again after retry_after_s
            info = SlurmJobInfo(job_id, found=False)
            self._missed_at[job_id] = self._clock.monotonic()
            if len(self._missed_at) > self._cache_size:
                del self._missed_at[next(iter(self._missed_at))]
        else:
            self._missed_at.pop(job_id, None)
        self._store(info)
        return self._meta(info, resolved=True)

    async def _show_job(self, job_id: str) -> SlurmJobInfo | None:
        if self._json_supported:
            code, out, err = await self._run_scontrol("-d", "show", "job", "--json", job_id)
            if code == 0:
                try:
                    info = parse_job_json(out, job_id)
                except ValueError:
                    pass  # an old scontrol ignored --json: use the text form from now on
                else:
                    if info is None:
                        # Exit 0 and "jobs": [] for a job whose processes run here: the
                        # controller answered without its state (Slurm 23.11-25.05), not "finished".
                        raise ScontrolError(EMPTY_ANSWER, f"scontrol -d show job --json {job_id}: no job in the answer")
                    return info
            elif _is_not_found(err):
                return None
            self._json_supported = False
        code, out, err = await self._run_scontrol("-d", "-o", "show", "job", job_id)
        if code == 0:
            info = parse_job_text(out, job_id)
            if info is None:
                raise ScontrolError(EMPTY_ANSWER, f"scontrol -d -o show job {job_id}: no job in the answer")
            return info
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

    async def show_job(self, job_id: str) -> tuple[str, bool] | None:
        """Raw `scontrol show job` output for receipts: (text, is JSON), None when
        scontrol does not know the job (purged). Raises ScontrolError."""
        if not self.enabled or not _JOB_ID.fullmatch(job_id):
            return None
        if self._json_supported:
            code, out, err = await self._run_scontrol("show", "job", "--json", job_id)
            if code == 0:
                return out, True
            if _is_not_found(err):
                return None
        code, out, err = await self._run_scontrol("show", "job", "-o", job_id)
        if code == 0:
            return out, False
        if _is_not_found(err):
            return None
        raise ScontrolError(reasons.COMMAND_FAILED, f"exit {code}: {err.strip()[:200]}")

    def _meta(self, info: SlurmJobInfo, *, resolved: bool) -> SlurmJobMeta:
        return SlurmJobMeta(
            job_id=info.job_id,
            workload=sanitise_label_value(f"slurm/{info.job_id}"),
            team=self._teams.team_for_account(info.account, info.user),
            account=sanitise_label_value(info.account),
            user=sanitise_label_value(info.user),
            resolved=resolved,
            partition=sanitise_label_value(info.partition),
            name=sanitise_label_value(info.name),
            state=sanitise_label_value(info.state),
        )

    def _miss_expired(self, job_id: str) -> bool:
        missed_at = self._missed_at.get(job_id)
        return missed_at is None or self._clock.monotonic() - missed_at >= self._retry_after_s

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


# Where slurmstepd puts a job's processes: cgroup v2 (the scope slurmd creates)
# and cgroup v1 (per controller, `slurm` or `slurm_<node>` with several slurmds).
_JOB_DIRS = ("system.slice/slurmstepd.scope/job_*", "*/slurm*/uid_*/job_*")


def local_job_ids(cgroup_root: Path = Path("/sys/fs/cgroup")) -> tuple[str, ...]:
    """Slurm jobs with a cgroup on this node, running a process or not."""
    ids = set()
    for pattern in _JOB_DIRS:
        for path in cgroup_root.glob(pattern):
            job_id = path.name.removeprefix("job_")
            if _JOB_ID.fullmatch(job_id):
                ids.add(job_id)
    return tuple(sorted(ids, key=int))


def minors_of(readings: Mapping[str, GpuReading]) -> dict[int, str]:
    """Device minor number (/dev/nvidiaN) -> GPU UUID, from the latest readings."""
    return {r.minor_number: uuid for uuid, r in readings.items() if r.minor_number is not None}


class SlurmAllocations:
    """GPU holders on a Slurm node: each local job holds the GPUs whose minor
    number is among its GPU indices for this node (an AllocationSource)."""

    def __init__(
        self,
        slurm: SlurmSource,
        node: str,
        gpus_by_minor: Callable[[], Mapping[int, str]],
        job_ids: Callable[[], Iterable[str]] = local_job_ids,
    ) -> None:
        self._slurm = slurm
        self._node = node
        self._gpus_by_minor = gpus_by_minor
        self._job_ids = job_ids

    def allocations(self) -> Mapping[str, tuple[Consumer, ...]]:
        by_minor = self._gpus_by_minor()
        held: dict[str, tuple[Consumer, ...]] = {}
        for job_id in self._job_ids():
            info = self._slurm.info(job_id)
            if info is None or not info.found:
                continue
            meta = self._slurm.job(job_id)
            consumer = Consumer(key=f"slurm/{job_id}", workload=meta.workload, team=meta.team)
            for minor in info.gpus_on(self._node):
                uuid = by_minor.get(minor)
                if uuid is not None:
                    held[uuid] = held.get(uuid, ()) + (consumer,)
        return held
