"""The one schema of a result, and the compute it cost.

:class:`ResultRow` is written by every recipe (``RunContext.record``) into ``results.jsonl``, and read back by
the sweep's SQLite store (:mod:`kdprune.experiments.store`, one column per field) and the report (its
``results.csv`` header is :func:`ResultRow.columns`). :class:`Cost` is the compute of a stage or a whole
result: costs add with ``+``.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields

from kdprune.hardware import machines


@dataclass(frozen=True)
class Cost:
    """Training compute: epochs, images through forward+backward, teacher forwards, wall seconds, and the
    machines it ran on (:func:`kdprune.hardware.describe`; none for stages recorded before kdprune kept it)."""

    epochs: int = 0
    images_fwd_bwd: int = 0
    teacher_forwards: int = 0
    wall_seconds: float = 0.0
    hardware: tuple[str, ...] = ()

    @classmethod
    def of(cls, metrics: dict | None) -> "Cost":
        """The cost a training stage recorded in its metrics (None: nothing, e.g. a given checkpoint)."""
        m = metrics or {}
        return cls(*(m.get(f.name, 0) for f in fields(cls) if f.name != "hardware"),
                   hardware=tuple(machines([m.get("hardware")])))

    def __add__(self, other: "Cost") -> "Cost":
        summed = (getattr(self, f.name) + getattr(other, f.name) for f in fields(self) if f.name != "hardware")
        return Cost(*summed, hardware=tuple(machines([self.hardware, other.hardware])))


def _extra(default=None):
    """A field only some recipes fill (channel pruning): left out of the row's dict while it is None."""
    return field(default=default, metadata={"extra": True})


@dataclass(frozen=True)
class ResultRow:
    """One result: a model at one sparsity (or MACs target), one retraining regime, one seed."""

    dataset: str
    arch: str
    teacher_arch: str | None
    method: str
    regime: str
    variant: str
    seed: int
    target_sparsity: float
    achieved_sparsity: float
    top1: float
    pruned_top1: float | None
    dense_top1: float | None
    teacher_top1: float | None
    epochs: int
    total_epochs: int
    images_fwd_bwd: int
    teacher_forwards: int
    scoring_batches: int
    wall_seconds: float
    total_wall_seconds: float
    nonzero_params: int
    total_params: int
    teacher_images_fwd_bwd: int | None
    out: str
    # channel pruning (--structure channel) and its unstructured twin
    structure: str | None = _extra()
    twin_of: str | None = _extra()
    target_macs: float | None = _extra()
    macs: int | None = _extra()
    macs_before: int | None = _extra()
    macs_reduction: float | None = _extra()
    params: int | None = _extra()
    # measured latency of a channel-pruned model against the dense one (and the target it was pruned to)
    target_latency: float | None = _extra()
    latency_runtime: str | None = _extra()
    latency_batch: int | None = _extra()
    latency_threads: int | None = _extra()
    latency_cpu: str | None = _extra()
    dense_latency_ms: float | None = _extra()
    latency_ms: float | None = _extra()
    latency_speedup: float | None = _extra()
    predicted_speedup: float | None = _extra()
    # the machines of the training stages this row's cost counts (kdprune.hardware.describe), " + "-joined
    hardware: str | None = _extra()

    @classmethod
    def columns(cls) -> list[str]:
        """The schema's field names in order: the CSV header and the store's columns."""
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        """The row as ``results.jsonl`` holds it (the extras only where set)."""
        extra = {f.name for f in fields(self) if f.metadata.get("extra")}
        return {k: v for k, v in asdict(self).items() if not (k in extra and v is None)}

    @classmethod
    def from_dict(cls, d: dict) -> "ResultRow":
        """A row read back: ``results.jsonl`` (rows of older versions lack later fields: None) or a
        ``results.csv`` (strings, converted by each field's type; an empty cell is None)."""
        types = typing.get_type_hints(cls)
        values = {}
        for f in fields(cls):
            v = d.get(f.name)
            if isinstance(v, str) and types[f.name] is not str:
                v = _parse(v, types[f.name])
            values[f.name] = v
        if values["variant"] is None:
            values["variant"] = ""
        return cls(**values)


def _parse(text: str, tp) -> object:
    if text == "":
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = args[0]
    if base is int:
        return int(float(text))
    if base is float:
        return float(text)
    return text


def is_channel_row(row: dict) -> bool:
    """A result of channel pruning, or of its unstructured twin (``--channel-twin``)."""
    return row.get("structure") == "channel" or row.get("twin_of") == "channel"


def channel_kind(rows: list[dict]) -> str | None:
    """``"macs"``/``"latency"``/``"params"`` when all ``rows`` are channel pruning (or its twin) to that kind of
    target (``"factor"`` for MACs and latency targets together)."""
    if not all(map(is_channel_row, rows)):
        return None
    return combine_kinds({"latency" if r.get("target_latency") is not None else "macs"
                          if r.get("target_macs") is not None else "params" for r in rows})


def combine_kinds(kinds: set[str]) -> str | None:
    """One level kind for results of these target kinds: the kind itself, ``"factor"`` for MACs and latency
    targets together (both are speed-up factors), None for factors mixed with parameter fractions."""
    return next(iter(kinds)) if len(kinds) == 1 else "factor" if "params" not in kinds else None
