"""Append-only JSONL outputs that survive a crash: one line per row, flushed and fsynced before the next request.

Generation is slow and its source (a model, an endpoint) can die at any time. Each kept row is on disk before the
next request goes out, each attempt's outcome goes to a log beside it, and a rerun skips every attempt already
decided. A line cut by a crash is trimmed on open, so the file never holds a half row.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from llmtailor.errors import TailorError


def _trim_partial_line(path: Path) -> None:
    """Cut a trailing line without its newline (written when the process died mid-write)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    try:
        with path.open("r", encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue  # trimmed on open; a hand-edited bad line is not ours to judge here
                if isinstance(obj, dict):
                    out.append(obj)
    except UnicodeDecodeError as e:
        raise TailorError(f"{path}: not UTF-8 text ({e}); move it away to start over") from None
    return out


class Journal:
    """`rows` (the kept rows, a JSONL a data source can read) + `<rows>.log.jsonl` (every attempt's outcome).

    An attempt is identified by a key (e.g. seed id + index); `done` holds the keys of kept or dropped attempts,
    so a rerun repeats only attempts that failed for an outside reason (endpoint down, timeout) or never ran.
    """

    def __init__(self, rows_path: Path, key_field: str):
        self.rows_path = Path(rows_path)
        self.log_path = self.rows_path.with_name(self.rows_path.name + ".log.jsonl")
        self.key_field = key_field
        self.rows_path.parent.mkdir(parents=True, exist_ok=True)
        for p in (self.rows_path, self.log_path):
            _trim_partial_line(p)
        self.rows = _read_lines(self.rows_path)
        self.log = _read_lines(self.log_path)
        self.done: set[str] = {str(r[key_field]) for r in self.log if r.get("status") in ("kept", "dropped")}
        meta_key = f"_{key_field}"
        self.done |= {str(r[meta_key]) for r in self.rows if meta_key in r}
        self.streak = 0  # outside failures in a row; a kept or dropped attempt ends the streak
        self._rows_f: TextIO | None = None
        self._log_f: TextIO | None = None

    def __enter__(self) -> Journal:
        self._rows_f = self.rows_path.open("a", encoding="utf-8")
        self._log_f = self.log_path.open("a", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        for f in (self._rows_f, self._log_f):
            if f is not None:
                f.close()

    @staticmethod
    def _write(f: TextIO | None, obj: dict[str, Any]) -> None:
        assert f is not None, "use the journal as a context manager"
        f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())

    def keep(self, key: str, row: dict[str, Any], **info: Any) -> None:
        """Write a kept row (tagged with its attempt key), then its log line."""
        tagged = {**row, f"_{self.key_field}": key}
        self._write(self._rows_f, tagged)
        self._write(self._log_f, {self.key_field: key, "status": "kept", **info})
        self.rows.append(tagged)
        self.done.add(key)
        self.streak = 0

    def drop(self, key: str, reason: str, **info: Any) -> None:
        """A decided attempt that produced nothing usable (counted by reason, never retried)."""
        self._write(self._log_f, {self.key_field: key, "status": "dropped", "reason": reason, **info})
        self.log.append({self.key_field: key, "status": "dropped", "reason": reason})
        self.done.add(key)
        self.streak = 0

    def error(self, key: str, kind: str, message: str) -> None:
        """An outside failure: logged, counted, retried by the next run."""
        self._write(self._log_f, {self.key_field: key, "status": "error", "kind": kind, "message": message[:300]})
        self.log.append({self.key_field: key, "status": "error", "kind": kind})

    def failed(self, key: str, exc: Any, *, limit: int, setting: str, noun: str, command: str) -> None:
        """An outside failure (`exc.kind`: down, timeout, ...) logged for a retry; `limit` of them in a row stop the
        run with a message saying what is safe and how to go on."""
        self.streak += 1
        self.error(key, exc.kind, str(exc))
        if self.streak >= limit:
            raise TailorError(f"{setting}: {self.streak} failures in a row, stopping (last: {exc}). {len(self.rows)} "
                              f"{noun} are safe in {self.rows_path}; rerun `{command}` to go on from there") from None

    def totals(self) -> dict[str, Any]:
        """Cumulative counts over every run: kept, dropped by reason, errors by kind."""
        kept = len({str(r[f"_{self.key_field}"]) for r in _read_lines(self.rows_path) if f"_{self.key_field}" in r})
        dropped = Counter(r.get("reason", "?") for r in self.log if r.get("status") == "dropped")
        errors = Counter(r.get("kind", "?") for r in self.log if r.get("status") == "error")
        return {"kept": kept, "dropped": dict(sorted(dropped.items())), "errors": dict(sorted(errors.items()))}
