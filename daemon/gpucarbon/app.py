"""Composition root: the one place that reads the config tree and wires the
stages together. Everything below takes explicit arguments."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gpucarbon.accounting import Accountant, Rates
from gpucarbon.attribution.energy import EnergyMeters
from gpucarbon.attribution.idle import IdleModel
from gpucarbon.backoff import Backoff
from gpucarbon.carbon.detect import ZoneDetectingProvider, lightkube_node_reader
from gpucarbon.carbon.providers import CarbonProvider, build_provider
from gpucarbon.carbon.reference import embodied_grams_per_second
from gpucarbon.carbon.table import WORLD_ZONE
from gpucarbon.carbon.zone import AUTO, resolve_zone
from gpucarbon.checkpoint import Checkpointer, read_boot_id
from gpucarbon.clock import Clock, ScaledClock, SystemClock
from gpucarbon.config import Config, ReceiptSettings, SlurmConfig
from gpucarbon.device.model import GpuBackend
from gpucarbon.device.reader import GpuReader
from gpucarbon.errors import ListenError, SetupError, require_extra
from gpucarbon.exporter.http import AuthFailures, build_server, json_handler, parse_listen_address, render_text
from gpucarbon.exporter.listener import ConnectionCounts
from gpucarbon.exporter.server import HttpServer
from gpucarbon.fileperms import warn_if_world_readable, warn_if_writable_by_others
from gpucarbon.identity.devices import GpuInventory, inventory_of
from gpucarbon.identity.model import AllocationSource
from gpucarbon.identity.procfs import ProcessCache, ProcFS
from gpucarbon.identity.resolver import Resolver
from gpucarbon.identity.slurm import SlurmAllocations, SlurmSource, minors_of
from gpucarbon.ledger import Ledger
from gpucarbon.poller import Poller
from gpucarbon.receipts.api import PATH as RECEIPTS_PATH
from gpucarbon.receipts.api import receipts_query
from gpucarbon.receipts.dispatcher import ReceiptDispatcher
from gpucarbon.receipts.kubernetes import KubernetesRunStatus
from gpucarbon.receipts.model import Owner
from gpucarbon.receipts.outbox import Outbox
from gpucarbon.receipts.service import ReceiptService
from gpucarbon.receipts.simulation import SimulatedRunStatus
from gpucarbon.receipts.sinks import EventSink, LogSink, WebhookSink
from gpucarbon.receipts.slurm import SlurmRunStatus
from gpucarbon.receipts.store import ReceiptFile, ReceiptRing
from gpucarbon.receipts.tracker import FirstStatus, RunStatus, RunTracker
from gpucarbon.simulation import SimulatedNode
from gpucarbon.simulation.procfs import SimulatedProcFS
from gpucarbon.simulation.scenario import Scenario
from gpucarbon.simulation.serving import ServingListener, serving_pods
from gpucarbon.state import CheckpointStore
from gpucarbon.teams import TeamRules

__all__ = ["Daemon", "RunOptions", "SetupError", "build_daemon", "require_extra", "run_once", "serve"]

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0  # bound on the final poll + checkpoint at SIGTERM
HEALTHY_POLL_INTERVALS = 3  # /healthz fails after this many poll intervals without a poll
HEALTHY_SLACK_S = 10.0


class Service(Protocol):
    """A background component with its own asyncio task (carbon source, watchers)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    """What the command line decides (the config file decides the rest)."""

    listen_address: str = ":9789"
    telemetry_path: str = "/metrics"
    poll_interval_s: float = 1.0
    procfs: str = "/proc"
    scenario: Scenario | None = None  # set: simulate instead of NVML
    speed: float | None = None  # overrides the scenario's speed
    state_dir: str | None = None  # overrides state.dir from the config
    serving_address: str | None = None  # set: serve the simulated serving engines' counters there


@dataclass
class Daemon:
    poller: Poller
    ledger: Ledger
    options: RunOptions
    services: tuple[Service, ...] = ()  # started with the daemon, closed at shutdown
    checkpointer: Checkpointer | None = None
    receipts: ReceiptService | None = None

    def healthy(self) -> bool:
        """The poll loop has completed a poll recently (3 intervals + slack)."""
        since = self.poller.seconds_since_poll()
        return since is None or since <= HEALTHY_POLL_INTERVALS * self.options.poll_interval_s + HEALTHY_SLACK_S


def build_daemon(
    config: Config, options: RunOptions, backend: GpuBackend | None = None, base_clock: Clock | None = None
) -> Daemon:
    """Every stage, each made after what it needs: device, carbon, identity,
    accounting, durability, then the loop that drives them."""
    base_clock = base_clock or SystemClock()
    clock, node = _simulation(options, base_clock, config.teams)
    serving = _serving(options, node)
    if backend is None:
        backend = node.gpus if node is not None else _nvml_backend(clock)
    reader = GpuReader(backend, clock, config.limits.gpu_read_timeout)
    kube = _kubernetes_client(config)
    intensity = _intensity(config, base_clock, kube)
    identity = _identity(
        config,
        options,
        clock,
        kube,
        node,
        inventory=lambda: inventory_of(reader.latest()),
        gpus_by_minor=lambda: minors_of(reader.latest()),
    )
    idle = IdleModel(config.attribution.idle_watts, config.attribution.idle_watts_by_gpu)
    ledger = Ledger(config.limits.max_workload_series, config.teams.default)
    meters = EnergyMeters()
    rates = _rates(config, intensity)
    accountant = Accountant(
        resolver=identity.resolver,
        allocations=identity.allocations,
        idle=idle,
        meters=meters,
        rates=rates,
        ledger=ledger,
        clock=clock,
        retention_s=config.retention.finished,
    )
    receipts = _receipts(config, options, clock, kube, node, identity) if config.receipts.enabled else None
    checkpointer = _checkpointer(config, options, base_clock, clock, ledger, meters, idle, receipts)
    poller = Poller(
        reader=reader,
        accountant=accountant,
        ledger=ledger,
        rates=rates,
        carbon=intensity,
        resolver=identity.resolver,
        sources=identity.health,
        checkpointer=checkpointer,
        receipts=receipts,
        wall=base_clock.wall,  # the self-metrics' timestamps stay real in a sped-up simulation
    )
    # Receipts close first: their last records reach the file before the API client closes.
    services = (
        *((receipts,) if receipts else ()),
        intensity,
        *(TaskService(s) for s in identity.sources),
        *serving,
    )
    return Daemon(
        poller=poller,
        ledger=ledger,
        options=options,
        services=services,
        checkpointer=checkpointer,
        receipts=receipts,
    )


def _simulation(options: RunOptions, base_clock: Clock, teams: TeamRules) -> tuple[Clock, SimulatedNode | None]:
    """The clock everything measures with, and the simulated node if asked for.
    A sped-up simulation runs on a ScaledClock so intervals are simulated seconds."""
    if options.scenario is None:
        return base_clock, None
    speed = options.speed or options.scenario.speed
    clock = ScaledClock(base_clock, speed) if speed != 1.0 else base_clock
    return clock, SimulatedNode.build(options.scenario, clock, teams)


def _serving(options: RunOptions, node: SimulatedNode | None) -> tuple[ServingListener, ...]:
    """The simulated serving engines' listener, when --simulate.serving-address asks for it."""
    if options.serving_address is None:
        return ()
    if node is None:
        raise SetupError("--simulate.serving-address: needs --simulate")
    pods = serving_pods(node.scenario.workloads)
    if not pods:
        raise SetupError(f"--simulate.serving-address: {node.scenario.source} has no workload with serving:")
    address = parse_listen_address(options.serving_address)
    return (ServingListener(pods, node.time.now, address.host, address.port),)


def _checkpointer(
    config: Config,
    options: RunOptions,
    base_clock: Clock,
    clock: Clock,
    ledger: Ledger,
    meters: EnergyMeters,
    idle: IdleModel,
    receipts: ReceiptService | None,
) -> Checkpointer | None:
    """The checkpointer, with the last checkpoint restored; None without a state dir."""
    state_dir = options.state_dir or config.state.dir
    if not state_dir:
        return None
    warn_if_writable_by_others(state_dir, "state directory")
    store = CheckpointStore(Path(state_dir), clock=base_clock)
    checkpointer = Checkpointer(
        store, ledger, meters, idle, clock, config.state.interval, read_boot_id(options.procfs), receipts=receipts
    )
    checkpointer.restore()
    return checkpointer


@dataclass(frozen=True)
class _Identity:
    resolver: Resolver
    allocations: AllocationSource | None
    sources: tuple[Any, ...]  # background sources with run()/close() and .health
    health: tuple[Any, ...]  # what the poller reads each source's health from (.snapshot())
    kubernetes: Any = None  # KubernetesSource: receipts read its pod objects
    slurm: SlurmSource | None = None  # receipts ask it how a job ended


def _identity(
    config: Config,
    options: RunOptions,
    clock: Clock,
    kube: tuple | None,
    node: SimulatedNode | None,
    inventory: Callable[[], GpuInventory],
    gpus_by_minor: Callable[[], Mapping[int, str]],
) -> _Identity:
    """pid -> consumer (procfs, Kubernetes, Slurm) and GPU holders (kubelet, simulation)."""
    processes = ProcessCache(ProcFS(options.procfs))
    metadata = _kubernetes_source(config, kube, clock) if kube else None
    slurm = (
        SlurmSource(teams=config.teams, clock=clock, scontrol=config.slurm.scontrol) if config.slurm.enabled else None
    )
    if slurm is not None and not slurm.enabled:
        # No scontrol on this host: the source is simply off. Worth a warning only
        # when the config named a scontrol; by default Slurm is used where installed.
        chosen = config.slurm.scontrol != SlurmConfig().scontrol
        log.log(
            logging.WARNING if chosen else logging.DEBUG,
            "slurm.scontrol: %r not found: Slurm source off",
            config.slurm.scontrol,
        )
        slurm = None
    lookup = processes.lookup
    if node is not None:  # pid-backed workloads with `cgroup:` answer for /proc themselves
        lookup = SimulatedProcFS(node.scenario, processes.lookup).lookup
    resolver = Resolver(
        lookup_process=lookup,
        metadata=metadata,
        synthetic=node.scheduler.consumer_for_pid if node is not None else None,
        slurm=slurm,
        user_teams=config.teams.users,
        process_cache=processes,
    )
    podresources = None
    kubelet = None
    allocations: AllocationSource | None = node.scheduler if node is not None else None
    if config.kubernetes.podresources_enabled:
        # grpc is imported only when the kubelet source is used.
        require_extra("grpc", "kubernetes.podresources.enabled", "kubernetes")
        from gpucarbon.identity.allocations import KubeletAllocations
        from gpucarbon.identity.podresources import PodResourcesSource

        podresources = PodResourcesSource(
            config.kubernetes.podresources_socket, clock=clock, poll_interval_s=config.kubernetes.podresources_interval
        )
        kubelet = KubeletAllocations(podresources, metadata, inventory)
        allocations = _merged(node.scheduler, kubelet) if node is not None else kubelet
    if slurm is not None and node is None:
        # Jobs holding GPUs on this node, running a process or not, pay their idle draw.
        slurm_node = config.slurm.node or socket.gethostname().split(".", 1)[0]
        held = SlurmAllocations(slurm, slurm_node, gpus_by_minor)
        allocations = _merged(allocations, held) if allocations is not None else held
    sources: tuple[Any, ...] = tuple(s for s in (metadata, podresources, slurm) if s is not None)
    # The kubelet source's health also carries its unmapped device IDs (a gauge).
    kubelet_health = kubelet.health_with_unmapped(podresources.health) if kubelet and podresources else None
    health = tuple(kubelet_health if s is podresources and kubelet_health else s.health for s in sources)
    return _Identity(resolver, allocations, sources, health, metadata, slurm)


def _receipts(
    config: Config,
    options: RunOptions,
    clock: Clock,
    kube: tuple | None,
    node: SimulatedNode | None,
    identity: _Identity,
) -> ReceiptService:
    """Receipts for finished runs: who says a run ended (simulation, Kubernetes,
    Slurm) and where receipts go (file, memory, log, Events, webhook)."""
    settings = config.receipts
    state_dir = options.state_dir or config.state.dir
    defaults = ReceiptSettings()
    if not state_dir and (settings.file_max_bytes, settings.file_keep) != (defaults.file_max_bytes, defaults.file_keep):
        raise SetupError("receipts.file: does nothing without state.dir or --state.dir (receipts.jsonl lives there)")
    node_name = kube[1] if kube else socket.gethostname()
    statuses: list[RunStatus] = []
    background: list[Any] = []
    if node is not None:
        statuses.append(SimulatedRunStatus(node.scheduler.run_ending))
    if identity.kubernetes is not None:
        statuses.append(KubernetesRunStatus(identity.kubernetes))
    if identity.slurm is not None:
        slurm = SlurmRunStatus(identity.slurm.show_job, clock.monotonic)
        statuses.append(slurm)
        background.append(slurm)
    sinks: list[Any] = [LogSink()]
    if kube is not None and settings.events:
        sinks.append(EventSink(kube[0], node_name, owner_of=_owner_of))
    webhook = WebhookSink(settings.webhook) if settings.webhook is not None else None
    outbox = None
    if settings.webhook is not None:
        outbox = Outbox(settings.webhook.outbox_size, Path(state_dir) if state_dir else None)
    backoff = Backoff(initial_s=1.0, max_s=300.0)
    dispatcher = ReceiptDispatcher(
        file=ReceiptFile(Path(state_dir), max_bytes=settings.file_max_bytes, keep=settings.file_keep)
        if state_dir
        else None,
        ring=ReceiptRing(settings.memory),
        sinks=tuple(sinks),
        outbox=outbox,
        webhook=webhook,
        retry_delay=backoff.delay,
    )
    tracker = RunTracker(
        settings,
        FirstStatus(*statuses),
        node=node_name,
        # Decided before retention.finished retires the run's series from /metrics.
        unknown_after_s=config.retention.finished / 2,
        already_written=dispatcher.written,
    )
    return ReceiptService(
        settings,
        tracker,
        dispatcher,
        node=node_name,
        offset_currency=config.carbon.currency,
        wall=clock.wall,
        background=tuple(background),
    )


def _owner_of(receipt: dict[str, Any]) -> Owner | None:
    """Whom the second Event regards: the run's top-level owner as its receipt names it."""
    owner = receipt.get("owner")
    if not isinstance(owner, dict):
        return None
    return Owner(owner["apiVersion"], owner["kind"], owner["name"], owner.get("uid") or "")


def _rates(config: Config, intensity: CarbonProvider) -> Rates:
    lifetime = config.carbon.embodied_lifetime_years
    overrides = dict(config.carbon.embodied_kg_by_model)

    def embodied(model: str) -> float:
        return embodied_grams_per_second(model, lifetime, overrides) or 0.0

    return Rates(
        pue=config.carbon.pue,
        intensity=intensity,
        embodied_grams_per_s=embodied if config.carbon.embodied_enabled else None,
        price_per_kwh=config.carbon.price_per_kwh,
        currency=config.carbon.currency,
        pue_by_zone=config.carbon.pue_by_zone,
        price_by_zone=config.carbon.price_by_zone,
    )


class TaskService:
    """Runs a source's `run()` as a task; `close()` cancels it and releases the source."""

    def __init__(self, source) -> None:
        self._source = source
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._source.run(), name=type(self._source).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        closer = getattr(self._source, "close", None)
        if closer is not None:
            await closer()


def _kubernetes_client(config: Config):
    """(lightkube AsyncClient, node name) when kubernetes.enabled, else None."""
    k = config.kubernetes
    if not k.enabled:
        return None
    # Imported here: bare hosts and Slurm nodes need neither lightkube nor grpc.
    require_extra("lightkube", "kubernetes.enabled", "kubernetes")
    from gpucarbon.identity.kubernetes import KubernetesSetupError, make_client

    node = k.node_name or os.environ.get("NODE_NAME")
    if not node:
        raise SetupError(
            "kubernetes.node_name: not set and $NODE_NAME is empty (the chart sets NODE_NAME from the downward API)"
        )
    try:
        return make_client(kubeconfig=k.kubeconfig), node
    except KubernetesSetupError as err:
        raise SetupError(f"kubernetes: {err}") from None


def _kubernetes_source(config: Config, kube: tuple, clock: Clock):
    from gpucarbon.identity.kubernetes import KubernetesSource

    client, node = kube
    return KubernetesSource(
        client,
        node_name=node,
        teams=config.teams,
        clock=clock,
        deleted_retention_s=config.retention.finished,
        owner_follow=config.kubernetes.owners_follow,
        owner_max_depth=config.kubernetes.owners_max_depth,
    )


class _merged:
    """Allocations from the simulation and the kubelet together (pid-backed
    simulated workloads are allocated through the kubelet fake in tests)."""

    def __init__(self, *sources: AllocationSource) -> None:
        self._sources = sources

    def allocations(self):
        merged: dict[str, tuple] = {}
        for source in self._sources:
            for uuid, holders in source.allocations().items():
                merged[uuid] = merged.get(uuid, ()) + tuple(holders)
        return merged


def _nvml_backend(clock: Clock) -> GpuBackend:
    from gpucarbon.device.nvml import NvmlBackend

    return NvmlBackend(clock=clock.monotonic, wall=clock.wall)


def _intensity(config: Config, clock: Clock, node: tuple | None) -> CarbonProvider:
    """The configured carbon intensity provider (raises ProviderConfigError).
    Live providers read wall time unscaled: grid intensity follows real time.
    With `zone: auto` on Kubernetes (`node` = (client, node name)), the zone
    comes from the node's labels at start."""
    c = config.carbon.intensity

    def build(zone: str) -> CarbonProvider:
        return build_provider(
            c.source,
            zone,
            grams_per_kwh=c.grams_per_kwh,
            region=c.region,
            base_url=c.base_url,
            token_env=c.token_env,
            token_file=c.token_file,
            username_env=c.username_env,
            password_env=c.password_env,
            signal_type=c.signal_type,
            refresh_s=c.refresh,
            stale_after_s=c.stale_after,
            timeout_s=c.timeout,
            clock=clock.wall,
        )

    if c.token_file:
        warn_if_world_readable(c.token_file, "carbon.intensity.token_file", "an API token")
    configured = build(resolve_zone(c.zone, labels={}))  # fail fast on bad settings or secrets
    if c.zone.strip().lower() != AUTO or node is None:
        return configured
    client, node_name = node
    return ZoneDetectingProvider(
        lightkube_node_reader(client, node_name), build, provisional=build_provider("table", WORLD_ZONE)
    )


async def run_once(daemon: Daemon) -> tuple[int, str]:
    """Poll, wait one interval, poll again; return (exit code, exposition or reason)."""
    await _start_services(daemon)
    try:
        await daemon.poller.poll()
        await asyncio.sleep(daemon.options.poll_interval_s)
        snapshot = await daemon.poller.poll()
    finally:
        await _close_services(daemon)
    if not snapshot.nvml_up:
        return 1, snapshot.nvml_reason
    return 0, render_text(daemon.poller.latest)


async def serve(
    daemon: Daemon,
    middlewares: tuple = (),
    ssl_context=None,
    auth_failures: AuthFailures | None = None,
    security_headers: dict[str, str] | None = None,
    certificate_expiry: float | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (SIGHUP is ignored); then a final poll and a
    bounded shutdown."""
    opts = daemon.options
    address = parse_listen_address(opts.listen_address)
    routes = (
        ((RECEIPTS_PATH, json_handler(receipts_query(daemon.receipts.dispatcher.ring))),) if daemon.receipts else ()
    )
    server = build_server(
        latest=daemon.poller.latest,
        healthy=daemon.healthy,
        telemetry_path=opts.telemetry_path,
        middlewares=middlewares,
        auth_failures=auth_failures,
        connections=ConnectionCounts(),
        certificate_expiry=certificate_expiry,
        routes=routes,
        ssl_context=ssl_context,
        security_headers=security_headers,
    )
    try:
        await server.start(address.host, address.port)
    except OSError as err:
        raise _listen_error(opts.listen_address, err) from None
    gpus = f"simulated GPUs: {opts.scenario.source}" if opts.scenario is not None else "GPUs through NVML"
    log.info("listening on %s%s (%s)", opts.listen_address, opts.telemetry_path, gpus)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _on_sighup)
    await _start_services(daemon)
    tasks = [asyncio.create_task(daemon.poller.run(opts.poll_interval_s, stop))]
    await stop.wait()
    log.info("shutting down")
    try:
        await asyncio.wait_for(_shutdown(daemon, tasks, server), timeout=SHUTDOWN_GRACE_S)
    except TimeoutError:
        log.warning("shutdown took longer than %.0fs; exiting anyway", SHUTDOWN_GRACE_S)
    return 0


def _listen_error(value: str, err: OSError) -> ListenError:
    flag = f"--web.listen-address={value}"
    if isinstance(err, socket.gaierror):
        return ListenError(f"{flag}: the host does not resolve ({err.strerror})", 2)
    if err.errno == errno.EADDRNOTAVAIL:
        return ListenError(f"{flag}: not an address of this machine", 2)
    if err.errno == errno.EADDRINUSE:
        return ListenError(f"{flag}: the port is already in use", 1)
    return ListenError(f"{flag}: cannot listen: {err.strerror or err}", 1)


def _on_sighup() -> None:
    """SIGHUP is ignored (docs/security.md): the configuration, web config and
    certificates are read once at start, and a restart loses no counters. A
    terminal hang-up or a reflexive `kill -HUP` must not end the daemon without
    its final checkpoint, which is what the default action did."""
    log.info("SIGHUP ignored: configuration is read at start; restart the daemon to apply changes")


async def _shutdown(daemon: Daemon, tasks: list[asyncio.Task], server: HttpServer) -> None:
    """Stop polling, take a final poll so the last interval is booked, save
    the checkpoint, then close services and the listener."""
    await asyncio.gather(*tasks, return_exceptions=True)
    await daemon.poller.poll()
    if daemon.checkpointer is not None:
        await daemon.checkpointer.save()
    await _close_services(daemon)
    await server.close()


async def _start_services(daemon: Daemon) -> None:
    for service in daemon.services:
        await service.start()


async def _close_services(daemon: Daemon) -> None:
    for service in daemon.services:
        try:
            await service.close()
        except Exception:  # shutdown goes on whatever one service does
            log.exception("closing %s failed", type(service).__name__)
