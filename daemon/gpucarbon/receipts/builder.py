"""A finished run's final totals + what the scheduler said -> one receipt. Pure.

The totals are the run's workload series exactly as /metrics shows them at the
end (integer millijoules), so `energy_joules` equals the sum of the run's
`gpucarbon_workload_energy_joules_total` series to the millijoule.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpucarbon.receipts.model import SCHEMA, RunFacts, receipt_id, rfc3339

MJ_PER_KWH = 3.6e9
GRAMS_PER_TONNE = 1e6


@dataclass(frozen=True, slots=True)
class GpuTally:
    uuid: str
    model: str
    energy_mj: int
    idle_mj: int
    grams: float
    held_s: float
    busy_s: float
    embodied_grams: float
    cost: float


@dataclass(frozen=True, slots=True)
class RunTally:
    """A run's totals at its end, one entry per GPU it used."""

    kind: str  # pod, slurm, process
    run_id: str  # pod UID, Slurm job id, process key
    namespace: str
    pod: str
    workload: str
    team: str
    started_at: float  # unix seconds
    finished_at: float
    gpus: tuple[GpuTally, ...]
    containers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiptContext:
    """How energy became emissions and money on this node when the run ended."""

    node: str
    pue: float
    zone: str
    source: str
    signal: str
    embodied_enabled: bool
    currency: str | None  # None: no energy price set
    offset_currency: str
    offset_price_per_tonne: float


def build_receipt(run: RunTally, facts: RunFacts, ctx: ReceiptContext, repeat_of: str | None = None) -> dict:
    energy_mj = sum(g.energy_mj for g in run.gpus)
    idle_mj = min(energy_mj, sum(g.idle_mj for g in run.gpus))
    grams = sum(g.grams for g in run.gpus)
    held = sum(g.held_s for g in run.gpus)
    busy = sum(g.busy_s for g in run.gpus)
    longest = max((g.held_s for g in run.gpus), default=0.0)
    started = facts.started_at if facts.started_at is not None else run.started_at
    finished = facts.finished_at if facts.finished_at is not None else run.finished_at
    finished = max(finished, started)
    kwh = energy_mj / MJ_PER_KWH
    models = sorted({g.model for g in run.gpus})
    receipt: dict = {
        "id": receipt_id(ctx.node, run.kind, run.run_id),
        "schema": SCHEMA,
        "node": ctx.node,
        "kind": run.kind,
        "namespace": run.namespace or None,
        "pod": run.pod or None,
        "pod_uid": facts.pod_uid or None,
        "workload": run.workload,
        "owner": {
            "apiVersion": facts.owner.api_version,
            "kind": facts.owner.kind,
            "name": facts.owner.name,
            "uid": facts.owner.uid or None,
        }
        if facts.owner is not None
        else None,
        "team": run.team,
        "job_id": facts.job_id or (run.run_id if run.kind == "slurm" else None),
        "user": facts.user or None,
        "account": facts.account or None,
        "outcome": facts.outcome,
        "reason": facts.reason or None,
        "exit_code": facts.exit_code,
        "started_at": rfc3339(started),
        "finished_at": rfc3339(finished),
        "duration": round(finished - started, 3),
        "held_seconds": round(held, 3),
        "busy_seconds": round(busy, 3),
        "energy_joules": energy_mj / 1000.0,
        "idle_energy_joules": idle_mj / 1000.0,
        "active_energy_joules": (energy_mj - idle_mj) / 1000.0,
        "energy_consumed": kwh,
        "mean_power_watts": round(energy_mj / 1000.0 / longest, 3) if longest > 0 else 0.0,
        "gpu_count": len(run.gpus),
        "gpu_model": ", ".join(models),
        "gpus": [
            {
                "uuid": g.uuid,
                "model": g.model,
                "energy_joules": g.energy_mj / 1000.0,
                "held_seconds": round(g.held_s, 3),
                "busy_seconds": round(g.busy_s, 3),
            }
            for g in sorted(run.gpus, key=lambda g: g.uuid)
        ],
        "emissions_grams": grams,
        "emissions": grams / 1000.0,
        "emissions_rate": grams / 1000.0 / (finished - started) if finished > started else 0.0,
        "intensity": {
            "zone": ctx.zone,
            "source": ctx.source,
            "signal": ctx.signal,
            "grams_per_kwh": round(grams / (kwh * ctx.pue), 3) if kwh > 0 and ctx.pue > 0 else 0.0,
        },
        "pue": ctx.pue,
    }
    if ctx.embodied_enabled:
        receipt["embodied_grams"] = sum(g.embodied_grams for g in run.gpus)
    if ctx.currency is not None:
        receipt["cost"] = {"amount": round(sum(g.cost for g in run.gpus), 6), "currency": ctx.currency}
    receipt["offset"] = {
        "price_per_tonne": ctx.offset_price_per_tonne,
        "currency": ctx.offset_currency,
        "cost": round(grams / GRAMS_PER_TONNE * ctx.offset_price_per_tonne, 6),
    }
    # A plain string ("sha256:<hex>"), so any reader can compare fingerprints
    # as values (the report groups runs by it); what went in is beside it.
    fingerprint = facts.fingerprint
    receipt["fingerprint"] = f"sha256:{fingerprint.sha256}" if fingerprint is not None else None
    receipt["fingerprint_inputs"] = list(fingerprint.inputs) if fingerprint is not None else None
    receipt["repeat_of"] = repeat_of
    return receipt


def note(receipt: dict) -> str:
    """The one line a person reads in `kubectl describe pod`."""
    busy = receipt["busy_seconds"] / receipt["held_seconds"] if receipt["held_seconds"] > 0 else 0.0
    intensity = receipt["intensity"]
    text = (
        f"Used {_energy(receipt['energy_joules'])} on {receipt['gpu_count']} "
        f"GPU{'s' if receipt['gpu_count'] != 1 else ''} over {_duration(receipt['duration'])} "
        f"(busy {busy:.0%}): {_grams(receipt['emissions_grams'])} CO2e at "
        f"{intensity['grams_per_kwh']:.0f} g/kWh ({intensity['source']} {intensity['zone']}, "
        f"PUE {receipt['pue']:g})"
    )
    if "cost" in receipt:
        text += f", cost {receipt['cost']['amount']:.2f} {receipt['cost']['currency']}"
    offset = receipt["offset"]
    text += (
        f", offset at {offset['price_per_tonne']:g} {offset['currency']}/t {offset['cost']:.2f} {offset['currency']}"
    )
    text += f"; outcome {receipt['outcome']}"
    if receipt.get("repeat_of"):
        text += f", repeat of {receipt['repeat_of']}"
    return text


def _energy(joules: float) -> str:
    kwh = joules / 3.6e6
    return f"{kwh:.1f} kWh" if kwh >= 1 else f"{kwh * 1000:.1f} Wh"


def _grams(grams: float) -> str:
    return f"{grams / 1000:.1f} kg" if grams >= 1000 else f"{grams:.1f} g"


def _duration(seconds: float) -> str:
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
