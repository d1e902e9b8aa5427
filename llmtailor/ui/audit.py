"""The workbench's audit log: one row per state-changing action (who, what, on what, outcome), in the registry.

The table lives in the registry database beside the deployment history, so `tailor registry` backups and a shared
PostgreSQL registry keep it too. Refused actions are logged as well: a blocked promotion is worth knowing about.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from llmtailor.registry.db import Registry


class _Base(DeclarativeBase):
    pass


class AuditEntry(_Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str | None] = mapped_column(Text, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))  # ok | refused | error
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


def ensure_table(reg: Registry) -> None:
    """Create the audit table in an existing registry (idempotent)."""
    _Base.metadata.create_all(reg.engine, checkfirst=True)


def record(reg: Registry, actor: str, action: str, target: str | None, outcome: str,
           detail: dict[str, Any] | None = None) -> None:
    with reg.session(write=True) as s:
        s.add(AuditEntry(created=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), actor=actor[:200],
                         action=action, target=target, outcome=outcome,
                         detail=json.loads(json.dumps(detail or {}, default=str))))


def entries(reg: Registry, limit: int = 200) -> list[dict[str, Any]]:
    """Newest first."""
    with reg.session() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
        return [{"id": r.id, "created": r.created.isoformat(timespec="seconds"), "actor": r.actor,
                 "action": r.action, "target": r.target, "outcome": r.outcome, "detail": r.detail} for r in rows]
