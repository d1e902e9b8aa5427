"""Access control: who may see which chunk, expressed as a store filter applied before top-k.

A chunk has `tenant` (str, "" = ingested without a tenant), `access_level` (int; names public=0 <
internal=1 < confidential=2 < restricted=3) and `groups` (list; empty = everyone in the tenant).
A caller (tenant T, groups G, level L) may see chunk c iff
    c.tenant == T and c.access_level <= L and (c.groups is empty or c.groups ∩ G ≠ ∅).
A caller without a tenant is the tenant "": it sees only chunks ingested without a tenant, never
another tenant's. The filter is compiled into the store query, so top-k is taken among allowed chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtailor.errors import TailorError
from llmtailor.rag.filters import Cmp, Filter, HasAny, IsEmpty, Or, all_of

LEVELS: dict[str, int] = {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}
LEVEL_NAMES = {v: k for k, v in LEVELS.items()}
DEFAULT_LEVEL = 0


def parse_level(value: str | int | None, default: int = DEFAULT_LEVEL) -> int:
    """An access level from a name (public, internal, confidential, restricted) or a non-negative integer."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise TailorError(f"access level must be a name ({', '.join(LEVELS)}) or an integer >= 0, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise TailorError(f"access level must be >= 0, got {value}")
        return value
    text = str(value).strip().lower()
    if text in LEVELS:
        return LEVELS[text]
    if text.isdigit():
        return int(text)
    raise TailorError(f"unknown access level {value!r}: use one of {', '.join(LEVELS)} or an integer >= 0")


def level_name(level: int) -> str:
    """Name of a level, or its number when it has no name."""
    return LEVEL_NAMES.get(level, str(level))


def parse_groups(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Groups from a comma-separated string or a list; blanks dropped, order kept, duplicates removed."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    out: list[str] = []
    for item in items:
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return tuple(out)


@dataclass(frozen=True)
class Caller:
    """Who is asking: the tenant, the groups they belong to and their clearance level."""

    tenant: str = ""
    groups: tuple[str, ...] = field(default_factory=tuple)
    level: int = DEFAULT_LEVEL

    def __post_init__(self) -> None:
        # Accept what an API caller naturally passes ("internal", ["hr"], None) and store the canonical form.
        object.__setattr__(self, "tenant", (self.tenant or "").strip())
        object.__setattr__(self, "groups", parse_groups(self.groups))
        object.__setattr__(self, "level", parse_level(self.level))

    @classmethod
    def of(cls, tenant: str | None = None, groups: str | list[str] | None = None, level: str | int | None = None):
        """Build from CLI/API values (None = no tenant, no groups, public)."""
        return cls(tenant=(tenant or "").strip(), groups=parse_groups(groups), level=parse_level(level))


def acl_filter(caller: Caller) -> Filter:
    """The filter that admits exactly the chunks `caller` may see."""
    group_rule: Filter = IsEmpty("groups")
    if caller.groups:
        group_rule = Or((IsEmpty("groups"), HasAny("groups", tuple(caller.groups))))
    flt = all_of(Cmp("tenant", "=", caller.tenant), Cmp("access_level", "<=", int(caller.level)), group_rule)
    assert flt is not None
    return flt


def can_see(caller: Caller, chunk: dict) -> bool:
    """The ACL rule written out directly (used by tests as an oracle independent of the filter tree)."""
    groups = chunk.get("groups") or []
    return (
        chunk.get("tenant", "") == caller.tenant
        and int(chunk.get("access_level", 0)) <= caller.level
        and (not groups or bool(set(groups) & set(caller.groups)))
    )
