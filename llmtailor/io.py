"""File helpers shared by every stage: atomic writes, JSONL with line numbers, content hashes.

Every file llmtailor writes goes through a temporary file in the same folder and an atomic rename,
so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from llmtailor.errors import RowError, TailorError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; give the result the usual permissions (umask applies) like open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write pretty JSON atomically."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line, atomically."""
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one line and flush (metrics logs, where a partial last line is tolerated on read)."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()


BOM = b"\xef\xbb\xbf"
MAX_LINE_BYTES = 64 << 20  # a longer line is reported and skipped unread, so one giant line cannot exhaust memory
MAX_DEPTH = 100  # JSON nesting a row may have; deeper rows would break json.dumps when written back (RecursionError)
_BLOCK = 1 << 20


def _split(f: BinaryIO, sep: bytes, limit: int) -> Iterator[bytes | None]:
    """Lines of a binary stream split on `sep` (removed); None for a line over `limit` bytes, which is never held
    in memory whole. A last line without a line break is still a line."""
    pending: list[bytes] = []
    size, skipping = 0, False
    for block in iter(lambda: f.read(_BLOCK), b""):
        parts = block.split(sep)
        for i, part in enumerate(parts):
            if not skipping:
                pending.append(part)
                size += len(part)
                if size > limit:
                    skipping, pending = True, []
            if i < len(parts) - 1:  # a line break follows this part
                yield None if skipping else b"".join(pending)
                pending, size, skipping = [], 0, False
    if skipping:
        yield None
    elif size:
        yield b"".join(pending)


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(line number, bytes without the line break, None) per line, or (line, None, problem) for an over-long line.

    Lines end with LF (a trailing CR is dropped, so CRLF works), numbered as `sed -n Np` and editors count them;
    a file with no LF in its first MiB but a CR uses classic-Mac CR endings and is split on CR. A UTF-8
    byte-order mark at the start of the file is dropped. Bytes are returned undecoded: a line that is not UTF-8
    is one bad row (see parse_jsonl_line), not a bad file.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(_BLOCK)
        sep = b"\r" if b"\n" not in head and b"\r" in head else b"\n"
        f.seek(0)
        for lineno, raw in enumerate(_split(f, sep, MAX_LINE_BYTES), start=1):
            if raw is None:
                yield lineno, None, f"line longer than {MAX_LINE_BYTES:,} bytes (skipped unread)"
                continue
            if lineno == 1:
                raw = raw.removeprefix(BOM)
            yield lineno, raw.removesuffix(b"\r"), None


def _walk(obj: Any) -> tuple[str | None, bool]:
    """(field path of the first string that is not encodable as UTF-8, nesting deeper than MAX_DEPTH?).

    Iterative, so a deep row cannot exhaust the stack; a lone surrogate (from a `\\ud800` escape) parses but
    breaks every later write, so it is caught here, at read time, with its field."""
    stack: list[tuple[str, Any, int]] = [("", obj, 1)]
    while stack:
        where, value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "row", False
        elif isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                return None, True
            if isinstance(value, dict):
                stack.extend((f"{where}.{k}" if where else str(k), v, depth + 1) for k, v in value.items())
            else:
                stack.extend((f"{where}[{i}]", v, depth + 1) for i, v in enumerate(value))
    return None, False


class _NonStandardNumber(ValueError):
    """NaN / Infinity: Python's json reads them, but they are not JSON and break every strict reader later."""


def _reject_constant(name: str) -> Any:
    raise _NonStandardNumber(name)


def parse_jsonl_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """One line's bytes (line break removed) -> (object, None, None) or (None, field or None, problem)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        column = len(raw[: e.start].decode("utf-8")) + 1  # characters, like JSON's own column numbers
        hint = "; the file looks like UTF-16: save it as UTF-8" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        return None, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column}){hint}"
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except _NonStandardNumber as e:
        return None, None, f"not valid JSON: {e} is not a JSON number (write null or a finite number)"
    except json.JSONDecodeError as e:
        return None, None, f"malformed JSON ({e.msg} at column {e.colno})"
    except RecursionError:
        return None, None, f"JSON nested too deeply (more than {MAX_DEPTH} levels)"
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        return None, None, f"malformed JSON ({str(e).split(';')[0]})"
    if not isinstance(obj, dict):
        return None, None, f"expected a JSON object, got {type(obj).__name__}"
    # Only a \\u escape can make a lone surrogate, and only that many brackets can nest that deep: skip the walk
    # for the ordinary row.
    if b"\\u" in raw or raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        where, too_deep = _walk(obj)
        if too_deep:
            return None, None, f"JSON nested too deeply (more than {MAX_DEPTH} levels)"
        if where is not None:
            return None, where, "invalid Unicode (a lone surrogate escape such as \\ud800)"
    return obj, None, None


def read_jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None, str | None]]:
    """(line, object, None, None) or (line, None, field or None, problem) for every non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise TailorError(f"{path}: file not found")
    try:
        for lineno, raw, problem in iter_jsonl_lines(path):
            if raw is None:
                yield lineno, None, None, problem
                continue
            try:
                if not raw.decode("utf-8").strip():
                    continue
            except UnicodeDecodeError:
                pass
            obj, where, problem = parse_jsonl_line(raw)
            yield lineno, obj, where, problem
    except OSError as e:
        raise TailorError(f"{path}: cannot read ({e.strerror or e})") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a bad line raises RowError naming it."""
    for lineno, obj, where, problem in read_jsonl_rows(path):
        if obj is None:
            raise RowError(Path(path), lineno, where, problem or "unreadable line")
        yield lineno, obj


def read_jsonl_lenient(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield (line, object or None, error or None) so a validator can report every bad line, not just the first.

    Nothing in a line's bytes raises: bad UTF-8, deep nesting, lone surrogates, huge numbers and over-long lines
    each come back as that line's error (with the field first, when there is one)."""
    for lineno, obj, where, problem in read_jsonl_rows(path):
        yield lineno, obj, (f"{where}: {problem}" if where and problem else problem)


def stable_hash(obj: Any, length: int = 16) -> str:
    """SHA-256 of the canonical JSON form of obj (sorted keys), truncated: the same value always hashes the same."""
    data = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:length]


def file_hash(path: str | Path, length: int = 16) -> str:
    """SHA-256 of a file's bytes, truncated."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def publish_dir(tmp_dir: Path, final_dir: Path) -> Path:
    """Move a fully written temporary folder into place; if it already exists (same content hash), keep the old one."""
    if final_dir.exists():
        shutil.rmtree(tmp_dir, ignore_errors=True)
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_dir, final_dir)
    return final_dir
