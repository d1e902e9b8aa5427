"""Mixing training rows by origin (human, synthetic, adversarial, refusal) to configured ratios.

The seeds' recipe is 70% human demonstrations, 20% synthetic (Evol-Instruct), 10% adversarial, with 5-10% of the
data being refusals. Human rows are the anchor and are never dropped to fit a ratio: the mix size is
human rows / human ratio, other origins are sampled down to their share (deterministically, by a seeded content
hash) or come up short when there are too few. The data card records planned vs achieved shares, so a short origin
is visible rather than silently rebalanced.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmtailor.data.rows import Row
from llmtailor.data.validate import RowProblem
from llmtailor.io import stable_hash

Origin = Literal["human", "synthetic", "adversarial", "refusal"]
ORIGINS: tuple[str, ...] = ("human", "synthetic", "adversarial", "refusal")
SUM_TOLERANCE = 1e-6


class MixConfig(BaseModel):
    """Shares of the training split by row origin (`data.mix` in tailor.yaml)."""

    model_config = ConfigDict(extra="forbid")

    ratios: dict[Origin, float] = Field(
        default_factory=lambda: {"human": 0.7, "synthetic": 0.2, "adversarial": 0.1},
        description="Share of the training split per origin; must sum to 1. Origins left out get no rows.",
    )
    refusal_range: tuple[float, float] = Field(
        (0.05, 0.10), description="Refusal share the seeds recommend; the card flags an achieved share outside it."
    )
    seed: int = Field(42, description="Seed of the sampling when an origin has more rows than its share.")

    @field_validator("ratios")
    @classmethod
    def _check_ratios(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"each ratio must be between 0 and 1, got {bad}")
        total = sum(value.values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            parts = " + ".join(f"{k} {v:g}" for k, v in value.items())
            raise ValueError(f"ratios must sum to 1, got {total:g} ({parts})")
        if value.get("human", 0.0) <= 0.0:
            raise ValueError("ratios.human must be above 0: human rows anchor the mix (the other shares scale to them)")
        return value


def origin_of(row: Row) -> str:
    """The row's origin (tagged by `tag_origin`; untagged rows are human)."""
    return str(row.extra.get("origin", "human"))


def tag_origin(row: Row, source_origin: str | None) -> RowProblem | None:
    """Give the row its origin: its own `origin` key, else its source's, else human. A bad value is a row problem."""
    own = row.extra.get("origin")
    if own is None:
        if source_origin is not None:
            row.extra["origin"] = source_origin
        return None
    if own not in ORIGINS:
        return RowProblem(row.file, row.line, "origin", f"unknown origin {own!r}; expected one of "
                          f"{', '.join(ORIGINS)}", "bad_origin")
    return None


def human_first(rows: list[Row]) -> list[Row]:
    """Stable order with human rows first: dedup keeps the first copy, so a synthetic row never evicts a human one."""
    rank = {o: i for i, o in enumerate(ORIGINS)}
    return sorted(rows, key=lambda r: rank.get(origin_of(r), len(ORIGINS)))


def counts(rows: list[Row]) -> dict[str, int]:
    """Rows per origin, in ORIGINS order."""
    c = Counter(origin_of(r) for r in rows)
    return {o: c[o] for o in ORIGINS if c[o]}


def _rank(row: Row, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{stable_hash(row.to_json(), 64)}".encode()).hexdigest()


def mix_rows(train: list[Row], cfg: MixConfig) -> tuple[list[Row], dict[str, Any]]:
    """(training rows sampled to the ratios, card section with planned vs achieved per origin)."""
    available = counts(train)
    humans = available.get("human", 0)
    size = humans / cfg.ratios["human"] if humans else 0.0
    target = {o: (humans if o == "human" else round(cfg.ratios.get(o, 0.0) * size)) for o in ORIGINS}
    chosen: set[int] = set()
    for o in ORIGINS:
        mine = [r for r in train if origin_of(r) == o]
        mine.sort(key=lambda r: _rank(r, cfg.seed))
        chosen |= {id(r) for r in mine[: target[o]]}
    kept = [r for r in train if id(r) in chosen]
    used = counts(kept)
    total = len(kept)
    achieved = {o: round(used.get(o, 0) / total, 4) if total else 0.0 for o in ORIGINS}
    notes = []
    for o in ORIGINS:
        short = target[o] - used.get(o, 0)
        if short > 0:
            notes.append(f"{o}: {short} rows short of its {cfg.ratios.get(o, 0):.0%} share "
                         f"(had {available.get(o, 0)}, needed {target[o]})")
        if available.get(o, 0) and not cfg.ratios.get(o):
            notes.append(f"{o}: {available[o]} rows left out (no ratio for this origin)")
    low, high = cfg.refusal_range
    if total and not low <= achieved["refusal"] <= high:
        notes.append(f"refusal share {achieved['refusal']:.1%} is outside the recommended {low:.0%}-{high:.0%}")
    report = {
        "planned": {o: cfg.ratios.get(o, 0.0) for o in ORIGINS},
        "achieved": achieved,
        "available": {o: available.get(o, 0) for o in ORIGINS},
        "used": {o: used.get(o, 0) for o in ORIGINS},
        "dropped_by_mix": len(train) - total,
        "notes": notes,
    }
    return kept, report


def mix_markdown(mix: dict[str, Any] | None) -> list[str]:
    """The data card's 'Mix by origin' section: planned vs achieved."""
    if not mix:
        return []
    lines = ["## Mix by origin", "", "| origin | planned | achieved | rows used | rows available |",
             "|---|---:|---:|---:|---:|"]
    for o in ORIGINS:
        lines.append(f"| {o} | {mix['planned'][o]:.1%} | {mix['achieved'][o]:.1%} | {mix['used'][o]} | "
                     f"{mix['available'][o]} |")
    lines += ["", f"Rows left out by the mix: {mix['dropped_by_mix']}."]
    lines += [f"- {n}" for n in mix["notes"]]
    return [*lines, ""]
