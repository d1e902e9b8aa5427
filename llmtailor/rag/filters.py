"""Metadata filters: one small expression tree, compiled for each store and evaluated in Python.

`--where` text is parsed into this tree (never passed through as SQL), so a filter can only name known
columns with literal values; the tree is then compiled to LanceDB SQL or a Qdrant `Filter`. The Python
evaluator `matches` states the semantics both compilers must agree with (the contract tests check it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from llmtailor.errors import TailorError

# Filterable columns and their kinds. Every one is stored non-null ("" / 0 when unknown) so that SQL,
# Qdrant and Python agree on every comparison.
TEXT_COLUMNS = {"tenant", "category", "date", "source", "title", "file_type", "heading_path"}
INT_COLUMNS = {"access_level", "page", "chunk_index"}
LIST_COLUMNS = {"groups"}
WHERE_COLUMNS = TEXT_COLUMNS | INT_COLUMNS  # groups are ACL-only: use --groups
RANGE_TEXT_COLUMNS = {"date"}  # ISO dates compare correctly as strings; other text columns allow = != IN only

Scalar = str | int | float


@dataclass(frozen=True)
class Cmp:
    """column <op> value; op in = != < <= > >= in notin (value is a tuple for in / notin)."""

    column: str
    op: str
    value: Any


@dataclass(frozen=True)
class HasAny:
    """A list column shares at least one value with `values`."""

    column: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class IsEmpty:
    """A list column is empty."""

    column: str


@dataclass(frozen=True)
class And:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    part: Filter


Filter = Cmp | HasAny | IsEmpty | And | Or | Not


def all_of(*parts: Filter | None) -> Filter | None:
    """AND of the given filters, skipping None."""
    kept = tuple(p for p in parts if p is not None)
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else And(kept)


# ---------------------------------------------------------------- Python semantics


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "in":
        return left in right
    if op == "notin":
        return left not in right
    if op == "=":
        return left == right
    if op == "!=":
        return left != right
    try:
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
        if op == ">":
            return left > right
        if op == ">=":
            return left >= right
    except TypeError:
        return False
    raise ValueError(f"unknown operator {op}")


def matches(flt: Filter | None, row: dict[str, Any]) -> bool:
    """Whether a chunk's metadata satisfies the filter (the reference semantics)."""
    if flt is None:
        return True
    if isinstance(flt, Cmp):
        return _compare(row.get(flt.column), flt.op, flt.value)
    if isinstance(flt, HasAny):
        return bool(set(row.get(flt.column) or ()) & set(flt.values))
    if isinstance(flt, IsEmpty):
        return not row.get(flt.column)
    if isinstance(flt, And):
        return all(matches(p, row) for p in flt.parts)
    if isinstance(flt, Or):
        return any(matches(p, row) for p in flt.parts)
    if isinstance(flt, Not):
        return not matches(flt.part, row)
    raise TypeError(f"not a filter: {flt!r}")


# ---------------------------------------------------------------- LanceDB SQL


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError("booleans are not filter values")
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


_SQL_OPS = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def to_sql(flt: Filter | None) -> str | None:
    """LanceDB (DataFusion) SQL for a filter; column names come from the fixed whitelist only."""
    if flt is None:
        return None
    if isinstance(flt, Cmp):
        if flt.op in ("in", "notin"):
            if not flt.value:
                return "FALSE" if flt.op == "in" else "TRUE"
            items = ", ".join(_sql_literal(v) for v in flt.value)
            return f"{flt.column} {'IN' if flt.op == 'in' else 'NOT IN'} ({items})"
        return f"{flt.column} {_SQL_OPS[flt.op]} {_sql_literal(flt.value)}"
    if isinstance(flt, HasAny):
        if not flt.values:
            return "FALSE"
        items = ", ".join(_sql_literal(v) for v in flt.values)
        return f"array_has_any({flt.column}, [{items}])"
    if isinstance(flt, IsEmpty):
        return f"{flt.column}_empty = true"  # an indexed flag column kept by the LanceDB store
    if isinstance(flt, And):
        return " AND ".join(f"({to_sql(p)})" for p in flt.parts)
    if isinstance(flt, Or):
        return " OR ".join(f"({to_sql(p)})" for p in flt.parts)
    if isinstance(flt, Not):
        return f"NOT ({to_sql(flt.part)})"
    raise TypeError(f"not a filter: {flt!r}")


# ---------------------------------------------------------------- --where parser

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op><=|>=|!=|<>|=|<|>)"
    r"|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_KEYWORDS = {"and", "or", "not", "in"}


def _tokenize(text: str) -> list[tuple[str, Any]]:
    for bad, why in ((";", "';' (one expression only)"), ("--", "SQL comments"), ("/*", "SQL comments"),
                     ('"', 'double quotes (use single quotes for values)')):
        if bad in text:
            raise TailorError(f"--where: {why} are not allowed: {text!r}")
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TailorError(f"--where: unexpected character {text[pos:].strip()[:1]!r} at position {pos + 1}")
        pos = m.end()
        if m.group("str") is not None:
            tokens.append(("value", m.group("str")[1:-1].replace("''", "'")))
        elif m.group("num") is not None:
            num = m.group("num")
            tokens.append(("value", float(num) if "." in num else int(num)))
        elif m.group("op") is not None:
            tokens.append(("op", "!=" if m.group("op") == "<>" else m.group("op")))
        elif m.group("punct") is not None:
            tokens.append((m.group("punct"), m.group("punct")))
        else:
            word = m.group("word")
            tokens.append(("kw", word.lower()) if word.lower() in _KEYWORDS else ("name", word))
    return tokens


class _Parser:
    """Recursive descent: expr := term (OR term)*; term := factor (AND factor)*; factor := NOT factor | (expr) | cmp."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def error(self, msg: str) -> TailorError:
        return TailorError(f"--where {self.text!r}: {msg}")

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None:
            raise self.error("unexpected end of expression")
        self.i += 1
        return tok

    def parse(self) -> Filter:
        if not self.tokens:
            raise self.error("empty expression")
        flt = self.expr()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()[1]!r}")
        return flt

    def expr(self) -> Filter:
        parts = [self.term()]
        while self.peek() == ("kw", "or"):
            self.take()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def term(self) -> Filter:
        parts = [self.factor()]
        while self.peek() == ("kw", "and"):
            self.take()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def factor(self) -> Filter:
        tok = self.peek()
        if tok == ("kw", "not"):
            self.take()
            return Not(self.factor())
        if tok is not None and tok[0] == "(":
            self.take()
            inner = self.expr()
            if self.peek() is None or self.take()[0] != ")":
                raise self.error("missing ')'")
            return inner
        return self.comparison()

    def comparison(self) -> Filter:
        kind, name = self.take()
        if kind != "name":
            raise self.error(f"expected a column name, got {name!r}")
        if name not in WHERE_COLUMNS:
            raise self.error(f"unknown column {name!r}; filterable columns: {', '.join(sorted(WHERE_COLUMNS))}")
        kind, op = self.take()
        negate = False
        if (kind, op) == ("kw", "not"):
            negate = True
            kind, op = self.take()
            if (kind, op) != ("kw", "in"):
                raise self.error("expected IN after NOT")
        if (kind, op) == ("kw", "in"):
            values = self.value_list(name)
            return Cmp(name, "notin" if negate else "in", tuple(values))
        if kind != "op":
            raise self.error(f"expected an operator after {name!r}, got {op!r}")
        if op in ("<", "<=", ">", ">=") and name in TEXT_COLUMNS and name not in RANGE_TEXT_COLUMNS:
            raise self.error(f"column {name!r} only supports =, != and IN")
        value = self.value(name)
        if name in RANGE_TEXT_COLUMNS and op in ("<", "<=", ">", ">="):
            # An unknown date is stored as ''; it must never satisfy a range, in any backend.
            return And((Cmp(name, "!=", ""), Cmp(name, op, value)))
        return Cmp(name, op, value)

    def value(self, column: str) -> Scalar:
        kind, value = self.take()
        if kind != "value":
            raise self.error(f"expected a literal value for {column!r}, got {value!r}")
        if column in INT_COLUMNS:
            if column == "access_level" and isinstance(value, str):
                from llmtailor.rag.acl import parse_level

                return parse_level(value)
            if not isinstance(value, int):
                raise self.error(f"column {column!r} takes an integer, got {value!r}")
        elif not isinstance(value, str):
            raise self.error(f"column {column!r} takes a quoted string, got {value!r}")
        return value

    def value_list(self, column: str) -> list[Scalar]:
        if self.take()[0] != "(":
            raise self.error("expected '(' after IN")
        values = [self.value(column)]
        while self.peek() is not None and self.peek()[0] == ",":
            self.take()
            values.append(self.value(column))
        if self.peek() is None or self.take()[0] != ")":
            raise self.error("missing ')' after IN list")
        return values


def parse_where(text: str | None) -> Filter | None:
    """Parse a `--where` expression into a filter tree, rejecting anything but simple comparisons."""
    if text is None or not text.strip():
        return None
    return _Parser(text).parse()


# ---------------------------------------------------------------- numpy (columnar) masks


class Columns:
    """Filterable columns of many rows as numpy arrays, for evaluating a filter on all rows at once.

    `values[name]` holds one array per scalar column; list columns (groups) are kept as one boolean
    array per distinct value plus an "is empty" array.
    """

    def __init__(self, n: int, values: dict[str, Any], lists: dict[str, list[list[str]]]):
        import numpy as np

        self.n = n
        self.values = {}
        for name, col in values.items():
            if name in INT_COLUMNS:
                self.values[name] = np.asarray(col, dtype=np.int64)
            else:
                self.values[name] = np.asarray(col, dtype=str) if n else np.zeros(0, dtype=str)
        self.members: dict[str, dict[str, Any]] = {}
        self.empty: dict[str, Any] = {}
        for name, rows in lists.items():
            index: dict[str, list[int]] = {}
            for i, items in enumerate(rows):
                for item in items or ():
                    index.setdefault(item, []).append(i)
            masks = {}
            for item, positions in index.items():
                m = np.zeros(n, dtype=bool)
                m[positions] = True
                masks[item] = m
            self.members[name] = masks
            self.empty[name] = np.fromiter((not items for items in rows), dtype=bool, count=n)


def _typed(column: str, value: Any) -> bool:
    """Whether a literal has the column's type (else, as in Python, = is never true and ranges are false)."""
    if isinstance(value, bool):
        return False
    if column in INT_COLUMNS:
        return isinstance(value, int | float)
    return isinstance(value, str)


def to_mask(flt: Filter | None, cols: Columns) -> Any:
    """Boolean array: which rows satisfy the filter (the same semantics as `matches`)."""
    import numpy as np

    if flt is None:
        return np.ones(cols.n, dtype=bool)
    if isinstance(flt, Cmp):
        arr = cols.values[flt.column]
        if flt.op in ("in", "notin"):
            vals = [v for v in flt.value if _typed(flt.column, v)]
            # No dtype=arr.dtype: a string column's fixed width would cut 'acme-evil' to 'acme' and match it.
            hit = np.isin(arr, np.asarray(vals)) if vals else np.zeros(cols.n, dtype=bool)
            return hit if flt.op == "in" else ~hit
        if not _typed(flt.column, flt.value):
            return np.ones(cols.n, dtype=bool) if flt.op == "!=" else np.zeros(cols.n, dtype=bool)
        value = flt.value
        ops = {"=": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater,
               ">=": np.greater_equal}
        return ops[flt.op](arr, value)
    if isinstance(flt, HasAny):
        masks = cols.members[flt.column]
        out = np.zeros(cols.n, dtype=bool)
        for v in flt.values:
            if v in masks:
                out |= masks[v]
        return out
    if isinstance(flt, IsEmpty):
        return cols.empty[flt.column].copy()
    if isinstance(flt, And):
        out = to_mask(flt.parts[0], cols)
        for p in flt.parts[1:]:
            out &= to_mask(p, cols)
        return out
    if isinstance(flt, Or):
        out = to_mask(flt.parts[0], cols)
        for p in flt.parts[1:]:
            out |= to_mask(p, cols)
        return out
    if isinstance(flt, Not):
        return ~to_mask(flt.part, cols)
    raise TypeError(f"not a filter: {flt!r}")
