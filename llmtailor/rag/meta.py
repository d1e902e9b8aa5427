"""Document metadata: CLI defaults, Markdown front matter and `name.meta.yaml` sidecars, merged safely.

Rules (documented in docs/rag.md). Whoever can write into the ingested folder controls front matter and sidecars,
so file-level metadata may only make a document *less* visible than the ingest command said, never more:
- `tenant` must agree: a file whose metadata names another tenant than `--tenant` (no `--tenant` = the tenant "")
  is skipped, never moved across tenants;
- `access_level` takes the more restrictive of the CLI value and the file's own;
- `groups` only narrow: the result is the intersection of every non-empty value given (CLI, sidecar, front matter);
  an empty or absent value leaves the others as they are, and a file whose groups share none with the command's
  is skipped (an empty result would mean "everyone in the tenant");
- `category`, `date`, `title` (not access rules): the sidecar wins over front matter, which wins over the CLI.
Records (`ingest_records`) come from code, which chooses their metadata the way `--tenant` does, so a record's
own `tenant` is taken when the call gave none (`file_sets_tenant=True`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmtailor.errors import TailorError
from llmtailor.rag.acl import parse_groups, parse_level
from llmtailor.rag.loaders import Refused, SkipFile

RESERVED = ("tenant", "access_level", "groups", "category", "date", "title")
SIDECAR_SUFFIX = ".meta.yaml"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class DocMeta:
    """Metadata attached to every chunk of a document (None = not given)."""

    tenant: str | None = None
    access_level: int | None = None
    groups: tuple[str, ...] | None = None
    category: str | None = None
    date: str | None = None
    title: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """Stable, JSON-able form (part of each source's hash, so a metadata change re-indexes the file)."""
        return {
            "tenant": self.tenant,
            "access_level": self.access_level,
            "groups": list(self.groups) if self.groups is not None else None,
            "category": self.category,
            "date": self.date,
            "title": self.title,
            "extra": self.extra,
        }


def normalize_date(value: Any, where: str) -> str:
    """ISO date string YYYY-MM-DD from a string or a YAML date."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).strip()
    if not _DATE.match(text):
        raise ValueError(f"{where}: date must be YYYY-MM-DD, got {value!r}")
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where}: not a real date: {text!r}") from None
    return text


def meta_from_mapping(data: dict[str, Any], where: str) -> DocMeta:
    """DocMeta from a front-matter or sidecar mapping; unknown keys are kept as extra metadata."""
    try:
        tenant = data.get("tenant")
        level = data.get("access_level", data.get("access-level"))
        groups = data.get("groups")
        if groups is not None and not isinstance(groups, list | str):
            raise ValueError(f"{where}: groups must be a list or a comma-separated string")
        extra = {
            str(k): v if isinstance(v, str | int | float | bool) or v is None else str(v)
            for k, v in data.items()
            if k not in RESERVED and k != "access-level"
        }
        return DocMeta(
            tenant=None if tenant is None else str(tenant).strip(),
            access_level=None if level is None else parse_level(level),
            groups=None if groups is None else parse_groups(groups),
            category=None if data.get("category") is None else str(data["category"]).strip(),
            date=None if data.get("date") is None else normalize_date(data["date"], where),
            title=None if data.get("title") is None else str(data["title"]).strip(),
            extra=extra,
        )
    except (ValueError, TailorError) as e:
        msg = str(e)
        raise SkipFile(msg if msg.startswith(where) else f"{where}: {msg}") from None


def sidecar_for(path: Path) -> Path | None:
    """`report.pdf.meta.yaml` or `report.meta.yaml` next to the file, if present."""
    for candidate in (path.with_name(path.name + SIDECAR_SUFFIX), path.with_name(path.stem + SIDECAR_SUFFIX)):
        if candidate.is_file():
            return candidate
    return None


def is_sidecar(path: Path) -> bool:
    return path.name.endswith(SIDECAR_SUFFIX)


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, every symbolic link resolved, lies in the (resolved) folder `root`."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a link loop
        return False
    return real == root or root in real.parents


def read_sidecar(path: Path, root: Path | None = None) -> tuple[DocMeta | None, str]:
    """(metadata, raw text) of a file's sidecar; (None, "") when it has none.

    With `root` (the resolved ingested folder), a sidecar that links out of it is refused, not read: it would pull
    in a file from elsewhere, and ignoring it could drop the restrictions it was meant to add.
    """
    side = sidecar_for(path)
    if side is None:
        return None, ""
    if root is not None and not inside(side, root):
        raise Refused(f"sidecar {side.name}: symbolic link pointing outside the ingested folder (not read)")
    try:
        raw = side.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SkipFile(f"sidecar {side.name}: unreadable ({e})") from None
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SkipFile(f"sidecar {side.name}{line}: invalid YAML") from None
    if not isinstance(data, dict):
        raise SkipFile(f"sidecar {side.name}: must be a YAML mapping (key: value lines)")
    return meta_from_mapping(data, f"sidecar {side.name}"), raw


def _show(groups: tuple[str, ...] | None) -> str:
    return "[" + ", ".join(groups or ()) + "]"


def merge(cli: DocMeta, front: DocMeta | None, side: DocMeta | None, *, file_sets_tenant: bool = False) -> DocMeta:
    """Effective metadata for one file (see module docstring for the rules); Refused when the file would widen."""
    file_meta = [m for m in (side, front) if m is not None]  # sidecar first: it wins over front matter

    def pick(name: str) -> Any:
        for m in file_meta:
            value = getattr(m, name)
            if value is not None:
                return value
        return getattr(cli, name)

    tenant = _merge_tenant(cli, side, front, file_sets_tenant)
    levels = [lv for lv in [cli.access_level, *(m.access_level for m in file_meta)] if lv is not None]
    extra: dict[str, Any] = {}
    for m in reversed(file_meta):
        extra.update(m.extra)
    return DocMeta(
        tenant=tenant,
        access_level=max(levels) if levels else None,
        groups=_merge_groups(cli, side, front),
        category=pick("category"),
        date=pick("date"),
        title=pick("title"),
        extra=extra,
    )


def _merge_tenant(cli: DocMeta, side: DocMeta | None, front: DocMeta | None, file_sets_tenant: bool) -> str | None:
    """The command's tenant; a file naming any other one (also when the command named none) is skipped."""
    named = [(where, m.tenant) for where, m in (("sidecar", side), ("front matter", front))
             if m is not None and m.tenant is not None]
    if file_sets_tenant and cli.tenant is None:
        tenants = {t for _, t in named}
        if len(tenants) > 1:
            raise Refused(f"conflicting tenants {sorted(tenants)} between sidecar and front matter")
        return tenants.pop() if tenants else None
    own = cli.tenant or ""
    for where, t in named:
        if t != own:
            raise Refused(
                f"conflicting tenants: {where} says {t!r}, the ingest's is {own!r}"
                f"{'' if cli.tenant is not None else ' (no --tenant)'}; a file cannot move itself to another tenant"
            )
    return cli.tenant


def _merge_groups(cli: DocMeta, side: DocMeta | None, front: DocMeta | None) -> tuple[str, ...] | None:
    """Intersection of every non-empty groups value; () / None (everyone) when none restricts."""
    given = [(where, m.groups) for where, m in (("--groups", cli), ("sidecar", side), ("front matter", front))
             if m is not None and m.groups is not None]
    limits = [(where, g) for where, g in given if g]
    if not limits:
        return () if given else None
    out = tuple(g for g in limits[0][1] if all(g in other for _, other in limits[1:]))
    if not out:
        parts = ", ".join(f"{where} {_show(g)}" for where, g in limits)
        raise Refused(f"groups do not overlap ({parts}): a file's groups can only narrow the ingest's, never "
                       "replace them")
    return out
