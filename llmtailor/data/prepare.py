"""The data stage: read -> validate -> fit length -> dedup -> redact PII -> split -> leakage -> versioned folder + card.

The version hash is known right after reading, so an unchanged dataset is returned at once
without re-running validation, dedup or the (slow) PII analysis. With `test_sources` (a golden
test set) the eval split is those rows as given, not a random share of `sources`.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmtailor.data.config import DataConfig
from llmtailor.data.dedup import exact_dedup, near_dedup
from llmtailor.data.leakage import check_leakage
from llmtailor.data.length import truncate_to_fit
from llmtailor.data.mix import counts, human_first, mix_rows, origin_of, tag_origin
from llmtailor.data.rows import Row
from llmtailor.data.split import split_rows
from llmtailor.data.validate import RawRow, RowProblem, check_row, length_problem, read_raw, token_length
from llmtailor.data.versions import (
    DatasetVersion,
    find_version,
    length_stats,
    tokenizer_fingerprint,
    version_hash,
    write_version,
)
from llmtailor.errors import TailorError

CARD_ERRORS = 50
TEST_ERRORS_SHOWN = 5


def _abs(path: Path) -> Path:
    # The config loader resolves against tailor.yaml; direct callers get the working directory.
    return path if path.is_absolute() else (Path.cwd() / path).resolve()


def _progress(show: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show,
    )


class _Stats:
    """Counters that end up in the data card."""

    def __init__(self) -> None:
        self.invalid: Counter[str] = Counter()
        self.errors: list[RowProblem] = []
        self.overlength = 0
        self.truncated = 0
        self.exact_dup = 0
        self.near_dup = 0
        self.pii: Counter[str] = Counter()
        self.pii_rows = 0
        self.test_pii_rows = 0
        self.leakage_dropped = 0
        self.duplicates: list[dict[str, Any]] = []  # each dropped copy and the row it copies, for the card

    def record_duplicate(self, dropped: Row, kept: Row, kind: str, similarity: float) -> None:
        """Dedup's callback: where the dropped copy was and which kept row it copies (file:line of both)."""
        self.duplicates.append({"file": dropped.file, "line": dropped.line, "kind": kind, "similarity": similarity,
                                "copy_of": f"{kept.file}:{kept.line}"})


def _fit(row: Row, tokenizer: Any, cfg: DataConfig, stats: _Stats) -> Row | None:
    """Measure a row; apply the overlength policy. Returns the row to keep or None (counted as overlength)."""
    row.tokens = token_length(tokenizer, row.messages)
    problem = length_problem(row, row.tokens, cfg.max_seq_len)
    if problem is None:
        return row
    if cfg.overlength == "truncate":
        cut = truncate_to_fit(row, tokenizer, cfg.max_seq_len)
        if cut is not None:
            stats.truncated += 1
            return cut
        problem.problem += " (the prompt alone does not fit; dropped)"
        problem.args = (problem.location() + problem.problem,)
    stats.overlength += 1
    stats.errors.append(problem)
    return None


def _hash_rows(sources: list[tuple[str, list[RawRow]]], *, test: bool = False) -> list[dict[str, Any]]:
    """Normalised input: parsed objects (key order and spacing don't matter) or the parse error, per line."""
    return [
        {
            "source": name,
            **({"test": True} if test else {}),
            "rows": [[r.line, r.obj if r.obj is not None else {"unreadable": r.error}] for r in raws],
        }
        for name, raws in sources
    ]


def _read_tests(cfg: DataConfig) -> tuple[list[tuple[Any, Path]], list[tuple[str, list[RawRow]]]]:
    """Read the golden test files; an empty one is an error (a test set of nothing would pass every gate)."""
    test_sources = [(src, _abs(src.path)) for src in cfg.test_sources]
    test_read = [(src.label, read_raw(path)) for src, path in test_sources]
    for (_, path), (_, raws) in zip(test_sources, test_read, strict=True):
        if not raws:
            raise TailorError(f"{path}: data.test_sources file has no rows; a test set needs at least one")
    return test_sources, test_read


def _check_tests(
    cfg: DataConfig, tokenizer: Any, test_sources: list[tuple[Any, Path]], test_read: list[tuple[str, list[RawRow]]]
) -> list[Row]:
    """Validate and convert every test row; any bad row is an error, since a golden set must not shrink silently."""
    tests: list[Row] = []
    problems: list[RowProblem] = []
    for (src, path), (label, raws) in zip(test_sources, test_read, strict=True):
        for raw in raws:
            row, found = check_row(raw, path, fmt=src.format, system_prompt=cfg.system_prompt, source=label)
            if row is None:
                problems += found
                continue
            row.tokens = token_length(tokenizer, row.messages)
            tests.append(row)
    if problems:
        bad = len({(p.file, p.line) for p in problems})
        shown = "; ".join(str(p) for p in problems[:TEST_ERRORS_SHOWN])
        more = f" (and {len(problems) - TEST_ERRORS_SHOWN} more)" if len(problems) > TEST_ERRORS_SHOWN else ""
        raise TailorError(
            f"data.test_sources: {bad} invalid test row(s); a test set is never shrunk silently, fix them: "
            f"{shown}{more}"
        )
    return tests


def prepare(cfg: DataConfig, tokenizer: Any, *, show_progress: bool = True) -> DatasetVersion:
    """Build (or reuse) the dataset version for `cfg`: output_dir/<hash> with train/eval JSONL and a data card."""
    if not cfg.sources:
        raise TailorError("data.sources: no data files configured; add at least one JSONL file")
    sources = [(src, _abs(src.path)) for src in cfg.sources]
    read = [(src.label, read_raw(path)) for src, path in sources]  # TailorError names a missing file
    test_sources, test_read = _read_tests(cfg)
    tok_id = tokenizer_fingerprint(tokenizer)
    hash_ = version_hash(_hash_rows(read) + _hash_rows(test_read, test=True), cfg, tok_id)
    output_dir = _abs(cfg.output_dir)
    existing = find_version(output_dir, hash_)
    if existing is not None:
        return existing

    stats = _Stats()
    rows: list[Row] = []
    tests = _check_tests(cfg, tokenizer, test_sources, test_read)  # before the slow steps: fail fast
    with _progress(show_progress) as progress:
        task = progress.add_task("validate", total=sum(len(raws) for _, raws in read))
        for (src, path), (label, raws) in zip(sources, read, strict=True):
            for raw in raws:
                row, problems = check_row(raw, path, fmt=src.format, system_prompt=cfg.system_prompt, source=label)
                progress.advance(task)
                if row is None:
                    stats.invalid[problems[0].kind] += 1
                    stats.errors += problems
                    continue
                bad_origin = tag_origin(row, src.origin)
                if bad_origin is not None:
                    stats.invalid[bad_origin.kind] += 1
                    stats.errors.append(bad_origin)
                    continue
                fitted = _fit(row, tokenizer, cfg, stats)
                if fitted is not None:
                    rows.append(fitted)

        rows = human_first(rows)  # dedup keeps first copies: a generated row never evicts a human one
        if cfg.dedup.enabled:
            rows, stats.exact_dup = exact_dedup(rows, stats.record_duplicate)
            task = progress.add_task("near-dedup", total=len(rows))
            rows, stats.near_dup = near_dedup(rows, cfg.dedup, lambda n: progress.advance(task, n),
                                              stats.record_duplicate)

        if cfg.pii.enabled and (rows or tests):
            from llmtailor.data.redact import count_unique, redact_rows

            protect = frozenset([cfg.system_prompt] if cfg.system_prompt else [])
            both = rows + tests  # one pass: test rows are redacted exactly like training rows
            task = progress.add_task("redact PII", total=count_unique(both))
            redacted, stats.pii, stats.pii_rows = redact_rows(
                both, cfg.pii, lambda n: progress.advance(task, n), protect=protect
            )
            new_rows, new_tests = redacted[: len(rows)], redacted[len(rows) :]
            # A placeholder can be longer than what it replaced: re-check the rows that changed.
            rows = [r if r is old else _fit(r, tokenizer, cfg, stats) for r, old in zip(new_rows, rows, strict=True)]
            rows = [r for r in rows if r is not None]
            stats.test_pii_rows = sum(r is not old for r, old in zip(new_tests, tests, strict=True))
            for r, old in zip(new_tests, tests, strict=True):
                if r is not old:  # measured again for the card; test rows are never dropped or cut
                    r.tokens = token_length(tokenizer, r.messages)
            tests = new_tests

        if not rows:
            first = "; ".join(str(e) for e in stats.errors[:3])
            raise TailorError(
                f"no usable rows: {sum(stats.invalid.values())} invalid, {stats.overlength} overlength, "
                f"{stats.exact_dup + stats.near_dup} duplicates" + (f" (first: {first})" if first else "")
            )

        if test_sources:
            train, evals = rows, tests
        else:
            # Only human rows are held out: a synthetic or adversarial row says nothing about real traffic.
            humans = [r for r in rows if origin_of(r) == "human"]
            others = [r for r in rows if origin_of(r) != "human"] if humans else []
            train, evals = split_rows(humans or rows, cfg.split.eval_fraction, cfg.split.seed)
            train += others
        task = progress.add_task("leakage", total=1)
        kept, leakage = check_leakage(train, evals, cfg)
        progress.advance(task)
        if len(kept) < len(train):
            gone = {id(r) for r in train} - {id(r) for r in kept}
            rows = [r for r in rows if id(r) not in gone]
            stats.leakage_dropped, train = len(gone), kept
        if not train:
            raise TailorError(
                f"no training rows left: all {stats.leakage_dropped} duplicate an eval row "
                "(data.leakage: drop_from_train); is a test source also listed in data.sources?"
            )
        mix_report = None
        if cfg.mix is not None:
            train, mix_report = mix_rows(train, cfg.mix)
        card = _card(hash_, cfg, sources, read, rows, train, evals, stats, tok_id)
        card["origins"] = {"curated": counts(rows), "train": counts(train)}
        if mix_report is not None:
            card["mix"] = mix_report
        card["eval_split"] = _eval_split(cfg, test_sources, test_read, tests, stats)
        card["leakage"] = leakage
        task = progress.add_task("write", total=1)
        path = write_version(output_dir, hash_, [r.to_json() for r in train], [r.to_json() for r in evals], card)
        progress.advance(task)
    return DatasetVersion(hash_, path, card, reused=False, errors=list(stats.errors))


def _card(
    hash_: str,
    cfg: DataConfig,
    sources: list[tuple[Any, Path]],
    read: list[tuple[str, list[RawRow]]],
    rows: list[Row],
    train: list[Row],
    evals: list[Row],
    stats: _Stats,
    tok_id: str,
) -> dict[str, Any]:
    """The data card: what went in, what was dropped and why, what came out."""
    kept_by_file = Counter(r.file for r in rows)
    source_rows = []
    for (src, path), (label, raws) in zip(sources, read, strict=True):
        kept = kept_by_file.get(str(path), 0)
        source_rows.append(
            {
                "name": label,
                "path": str(path),
                "format": src.format,
                "rows": len(raws),
                "rows_kept": kept,
                "share": round(kept / len(rows), 4) if rows else 0.0,
            }
        )
    tokens, histogram = length_stats([r.tokens for r in rows], cfg.max_seq_len)
    # Flat {reason: rows}: the values sum to the rows dropped.
    dropped = {f"invalid: {kind}": n for kind, n in sorted(stats.invalid.items())}
    dropped.update(overlength=stats.overlength, exact_dup=stats.exact_dup, near_dup=stats.near_dup)
    if cfg.leakage == "drop_from_train":
        dropped["leakage"] = stats.leakage_dropped
    return {
        "hash": hash_,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": tok_id,
        "sources": source_rows,
        "rows_in": sum(len(raws) for _, raws in read),
        "rows_kept": len(rows),
        "dropped": dropped,
        "truncated": stats.truncated,
        "system_prompt_added": sum(r.system_added for r in rows),
        "converted_alpaca": sum(r.converted for r in rows),
        "pii_enabled": cfg.pii.enabled,
        "pii_counts": {e: stats.pii.get(e, 0) for e in cfg.pii.entities} if cfg.pii.enabled else {},
        "pii_rows_changed": stats.pii_rows,
        "train_rows": len(train),
        "eval_rows": len(evals),
        "token_lengths": {**tokens, "histogram": histogram},
        "config": cfg.model_dump(mode="json"),
        "errors": [str(e) for e in stats.errors[:CARD_ERRORS]],
        "errors_total": len(stats.errors),
        "duplicates": stats.duplicates[:CARD_ERRORS],
        "duplicates_total": len(stats.duplicates),
    }


def _eval_split(
    cfg: DataConfig,
    test_sources: list[tuple[Any, Path]],
    test_read: list[tuple[str, list[RawRow]]],
    tests: list[Row],
    stats: _Stats,
) -> dict[str, Any]:
    """Where the eval split came from: the golden test set (with its files) or a seeded random share."""
    if not test_sources:
        return {
            "source": "random_split",
            "description": f"random {cfg.split.eval_fraction:.0%} of the curated rows (seed {cfg.split.seed})",
            "eval_fraction": cfg.split.eval_fraction,
            "seed": cfg.split.seed,
        }
    return {
        "source": "test_sources",
        "description": "golden test set (data.test_sources), never trained on",
        "files": [
            {"name": label, "path": str(path), "format": src.format, "rows": len(raws)}
            for (src, path), (label, raws) in zip(test_sources, test_read, strict=True)
        ],
        "rows": len(tests),
        "rows_over_max_seq_len": sum(r.tokens > cfg.max_seq_len for r in tests),
        "converted_alpaca": sum(r.converted for r in tests),
        "system_prompt_added": sum(r.system_added for r in tests),
        "pii_rows_changed": stats.test_pii_rows,
    }
