"""The registry database: what was built from what, what is deployed, and who may call it.

SQLAlchemy keeps one schema for a SQLite file (the default, next to tailor.yaml) and PostgreSQL (by URL).
Ids carry their kind so `tailor registry show ID` needs no flag: `ds-<hash>` datasets, run folder names for
runs, `ad-<run>` adapters, `ix-<hash>` indexes, `ev-<n>` evaluations, `dep-<n>` deployments, `key-<n>` keys,
`ex-<hash>` exports (`tailor export`).
Deployments are append-only: the current state of a stage is its newest row, so every promotion, canary,
shadow, forced promotion and rollback stays in the history. Columns added after a database was created are
added on open (`_add_missing_columns`), so an older registry.db keeps working.
The PostgreSQL path (psycopg 3, `pip install 'llmtailor[postgres]'`) runs the same tests on a real server; a
plain `postgresql://` or `postgres://` URL is read as `postgresql+psycopg://`.

Several processes share one registry (the server's request-log writer, CLI commands, CI). SQLite is opened in WAL
mode (readers and the writer do not block each other) with a busy timeout and synchronous=NORMAL, and every writing
session starts with BEGIN IMMEDIATE, so writers queue for the lock instead of failing or acting on a stale read.
Promote and rollback read the stage's current deployment, check the gates and write the new row in one transaction
that also holds the stage's lock (SQLite: the write lock; PostgreSQL: a transaction advisory lock), so concurrent
promotions form one chain instead of forking the history.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column

from llmtailor.errors import TailorError

STAGES = ("staging", "production")
KEY_PREFIX = "tlr-"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    rows: Mapped[dict] = mapped_column(JSON, default=dict)
    card: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    base_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    code_version: Mapped[str | None] = mapped_column(Text, nullable=True)
    config: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


class Adapter(Base):
    __tablename__ = "adapters"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    path: Mapped[str] = mapped_column(Text)
    method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    base_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


class Export(Base):
    """A file exported from an adapter for another runtime (GGUF adapter, merged GGUF, Ollama Modelfile)."""

    __tablename__ = "exports"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    adapter_id: Mapped[str | None] = mapped_column(ForeignKey("adapters.id"), nullable=True)
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    quant: Mapped[str | None] = mapped_column(String(16), nullable=True)
    info: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


class IndexVersion(Base):
    """One content version of a RAG index folder (recorded by `tailor rag ingest` run with a project config)."""

    __tablename__ = "indexes"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str | None] = mapped_column(Text, nullable=True)
    info: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


class Evaluation(Base):
    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    adapter_id: Mapped[str | None] = mapped_column(ForeignKey("adapters.id"), nullable=True)
    results_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    gates: Mapped[Any] = mapped_column(JSON, nullable=True)
    passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


class Deployment(Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stage: Mapped[str] = mapped_column(String(16), index=True)
    action: Mapped[str] = mapped_column(String(16))  # promote | canary | shadow | rollback
    adapter_id: Mapped[str | None] = mapped_column(ForeignKey("adapters.id"), nullable=True)
    canary_adapter_id: Mapped[str | None] = mapped_column(ForeignKey("adapters.id"), nullable=True)
    canary_percent: Mapped[float] = mapped_column(Float, default=0.0)
    # A shadow gets a copy of the stage's traffic; its answers are logged, never returned.
    shadow_adapter_id: Mapped[str | None] = mapped_column(ForeignKey("adapters.id"), nullable=True)
    previous_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str] = mapped_column(String(128))
    groups: Mapped[list] = mapped_column(JSON, default=list)
    models: Mapped[list] = mapped_column(JSON, default=list)
    level: Mapped[int] = mapped_column(Integer, default=0)
    rate_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    name: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    revoked: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class RequestLog(Base):
    __tablename__ = "requests"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=_now, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tenant: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model: Mapped[str] = mapped_column(Text)
    adapter_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    guardrails: Mapped[list] = mapped_column(JSON, default=list)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set on a shadow answer's row: the id of the user's request it copies (never returned to anyone).
    shadow_of: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    stage: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the deployment a shadow row followed
    routed_to: Mapped[str | None] = mapped_column(Text, nullable=True)  # what a routing alias chose


class Feedback(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rating: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


@dataclass(frozen=True)
class KeyInfo:
    """What the server needs to know about a caller; tenant and groups come only from here."""

    id: int
    tenant: str
    groups: tuple[str, ...]
    models: tuple[str, ...]
    level: int
    rate_limit: int | None

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models


@dataclass(frozen=True)
class DeploymentState:
    """The newest deployment row of a stage."""

    id: int
    stage: str
    adapter_id: str | None
    adapter_path: str | None
    canary_adapter_id: str | None
    canary_path: str | None
    canary_percent: float
    shadow_adapter_id: str | None = None
    shadow_path: str | None = None


def hash_key(secret: str) -> str:
    """Keys are 256-bit random tokens, so a plain SHA-256 is enough (no password stretching needed)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def default_url(base_dir: Path) -> str:
    env = os.environ.get("LLMTAILOR_REGISTRY_URL")
    return env or f"sqlite:///{(base_dir / 'registry.db').resolve()}"


def _row_dict(row: Any) -> dict[str, Any]:
    out = {}
    for col in row.__table__.columns:
        v = getattr(row, col.name)
        out[col.name] = v.isoformat(timespec="seconds") if isinstance(v, dt.datetime) else v
    return out


def parse_gates(results: dict[str, Any]) -> tuple[Any, bool | None]:
    """(gates, passed) from an eval results.json; passed is None when the evaluation defined no gates.

    Accepts `{"passed": bool, ...}`, a mapping name -> bool | {"passed": bool}, or a list of {"passed": bool}.
    """
    gates = results.get("gates")
    if gates is None:
        return None, None
    if isinstance(gates, dict):
        if isinstance(gates.get("passed"), bool):
            return gates, gates["passed"]
        flags = [v if isinstance(v, bool) else bool(v.get("passed")) for v in gates.values()
                 if isinstance(v, bool | dict)]
        return gates, all(flags) if flags else None
    if isinstance(gates, list):
        flags = [bool(g.get("passed")) for g in gates if isinstance(g, dict)]
        return gates, all(flags) if flags else None
    return gates, None


class Registry:
    """One database; every method opens a short session so the server and CLI can share the file."""

    def __init__(self, url: str, *, timeout: float = 10.0):
        """`timeout` (seconds) bounds waiting for a lock (both backends) and for a PostgreSQL connection."""
        url = normalize_url(url)
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": timeout}
        elif url.startswith("postgresql"):
            # Without a connect timeout a down server would hang `tailor` and the server's request logging (the
            # lock timeout is set per connection below); pre-ping replaces pooled connections a server restart
            # closed instead of failing one request with them.
            kwargs["connect_args"] = {"connect_timeout": max(1, round(timeout))}
            kwargs["pool_pre_ping"] = True
        try:
            self.engine = create_engine(url, **kwargs)
        except ImportError as e:
            hint = " (pip install 'llmtailor[postgres]')" if url.startswith("postgresql") else ""
            raise TailorError(f"registry {safe_url(url)}: database driver missing: {e}{hint}") from None
        except (SQLAlchemyError, ValueError) as e:
            raise TailorError(f"registry {safe_url(url)}: cannot open ({e})") from None
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas(timeout))
            event.listen(self.engine, "begin", _sqlite_begin)
        elif url.startswith("postgresql"):
            event.listen(self.engine, "connect", _pg_lock_timeout(timeout))
        # Sessions that write run on this view of the engine: on SQLite their transaction starts with BEGIN IMMEDIATE.
        self._writer = self.engine.execution_options(**{_WRITE: True})
        try:
            with self.engine.connect() as conn:
                current = not _schema_todo(conn)
            if not current:  # under the write lock: processes opening a new registry at once create it once
                with self._writer.begin() as conn:
                    _lock(conn, "schema")
                    Base.metadata.create_all(conn)
                    _add_missing_columns(conn)
        except SQLAlchemyError as e:
            self.engine.dispose()
            raise registry_error(url, e) from None

    @property
    def display_url(self) -> str:
        """Where the registry is, safe to print or log (password masked)."""
        return safe_url(self.url)

    @classmethod
    def for_config(cls, cfg: Any) -> Registry:
        """The registry named in tailor.yaml (registry.url), else registry.db next to it (or beside runs_dir)."""
        url = cfg.registry.url or default_url(cfg.base_dir if cfg.path else Path(cfg.runs_dir).parent)
        return cls(url)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Dispose of the connections; on SQLite first fold the write-ahead log into the database file (as far as
        readers allow), so a plain copy of registry.db made afterwards has this process's writes."""
        if self.url.startswith("sqlite"):
            with contextlib.suppress(Exception):
                raw = self.engine.raw_connection()
                try:
                    raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    raw.close()
        self.engine.dispose()

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction. `write=True` for any session that writes: on SQLite it takes the write lock first
        (BEGIN IMMEDIATE, waiting up to the busy timeout), so what it reads cannot change before it commits."""
        try:
            with Session(self._writer if write else self.engine, expire_on_commit=False) as s, s.begin():
                yield s
        except SQLAlchemyError as e:
            raise registry_error(self.url, e) from None

    # ---- lineage records -------------------------------------------------------------------------
    def record_dataset(self, hash_: str, path: str | Path, card: dict[str, Any] | None = None) -> str:
        card = card or {}
        rid = f"ds-{hash_}"
        with self.session(write=True) as s:
            _lock(s, rid)
            row = s.get(Dataset, rid) or Dataset(id=rid, hash=hash_)
            row.path = str(path)
            row.card = json.loads(json.dumps(card, default=str))
            row.rows = {k: card[k] for k in ("train_rows", "eval_rows", "rows") if k in card}
            s.merge(row)
        return rid

    def record_run(self, run_dir: Path, info: dict[str, Any]) -> str:
        rid = str(info.get("run_id") or run_dir.name)
        cfg_file = run_dir / "config.yaml"
        # objective and parents: lineage of preference-tuned, pretrained and merged runs (their parent runs).
        metrics = {k: info[k] for k in ("final_loss", "first_loss", "train_loss", "steps", "train_runtime_s",
                                        "train_tokens_per_s", "train_rows", "objective", "parents",
                                        "preference_data", "preference_hash", "merge") if k in info}
        with self.session(write=True) as s:
            ds = info.get("dataset_hash")
            ds_id = f"ds-{ds}" if ds else None
            if ds_id:
                _lock(s, ds_id)  # the dataset before the run, as record_dataset: no lock-order deadlock
            _lock(s, f"run:{rid}")
            if ds_id and s.get(Dataset, ds_id) is None:
                s.add(Dataset(id=ds_id, hash=ds, path=str(info.get("dataset_dir") or ""), card={}, rows={}))
            row = s.get(Run, rid) or Run(id=rid)
            row.dataset_id = ds_id
            row.path = str(run_dir)
            row.status = info.get("status")
            row.base_model = info.get("base_model")
            row.method = info.get("method")
            row.code_version = json.dumps(info.get("code_version")) if info.get("code_version") else None
            row.config = cfg_file.read_text(encoding="utf-8") if cfg_file.exists() else None
            row.metrics = metrics
            s.merge(row)
        return rid

    def record_adapter(self, run_id: str, path: Path, method: str | None, base_model: str | None) -> str:
        aid = f"ad-{run_id}"
        with self.session(write=True) as s:
            _lock(s, aid)
            row = s.get(Adapter, aid) or Adapter(id=aid)
            row.run_id = run_id
            row.path = str(path)
            row.method = method
            row.base_model = base_model
            s.merge(row)
        return aid

    def record_evaluation(self, run_id: str, results_path: Path, results: dict[str, Any]) -> str:
        gates, passed = parse_gates(results)
        metrics = results.get("variants", {})
        with self.session(write=True) as s:
            adapter = s.get(Adapter, f"ad-{run_id}")
            row = Evaluation(run_id=run_id, adapter_id=adapter.id if adapter else None, results_path=str(results_path),
                             metrics=json.loads(json.dumps(metrics, default=str)), gates=gates, passed=passed)
            s.add(row)
            s.flush()
            return f"ev-{row.id}"

    def record_index(self, path: Path, fingerprint: str | None, info: dict[str, Any]) -> str:
        """One version of a RAG index (its folder and content version); re-recording the same version keeps its
        first `created`, so the history of an index folder stays in build order."""
        iid = "ix-" + hashlib.sha256(f"{Path(path).resolve()}|{fingerprint}".encode()).hexdigest()[:12]
        with self.session(write=True) as s:
            _lock(s, iid)
            row = s.get(IndexVersion, iid) or IndexVersion(id=iid)
            row.path = str(path)
            row.fingerprint = fingerprint
            row.info = json.loads(json.dumps(info, default=str))
            s.merge(row)
        return iid

    def record_export(self, run_id: str, path: Path, fmt: str, quant: str | None, info: dict[str, Any]) -> str:
        """An exported file, linked to the run and its adapter; re-exporting to the same path updates the row."""
        xid = "ex-" + hashlib.sha256(f"{Path(path).resolve()}|{fmt}|{quant}".encode()).hexdigest()[:12]
        with self.session(write=True) as s:
            _lock(s, xid)
            adapter = s.get(Adapter, f"ad-{run_id}")
            row = s.get(Export, xid) or Export(id=xid)
            row.run_id = run_id if s.get(Run, run_id) is not None else None
            row.adapter_id = adapter.id if adapter else None
            row.path, row.format, row.quant = str(path), fmt, quant
            row.info = json.loads(json.dumps(info, default=str))
            row.created = _now()
            s.merge(row)
        return xid

    # ---- lookup ----------------------------------------------------------------------------------
    def adapter(self, name: str) -> dict[str, Any] | None:
        """An adapter by id (`ad-...`) or by its run id."""
        with self.session() as s:
            row = s.get(Adapter, name) or s.get(Adapter, f"ad-{name}")
            return _row_dict(row) if row else None

    def adapters(self) -> list[dict[str, Any]]:
        with self.session() as s:
            return [_row_dict(r) for r in s.scalars(select(Adapter).order_by(Adapter.created))]

    def latest_evaluation(self, adapter_id: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.scalars(select(Evaluation).where(Evaluation.adapter_id == adapter_id)
                            .order_by(Evaluation.id.desc()).limit(1)).first()
            return _row_dict(row) | {"id": f"ev-{row.id}"} if row else None

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Rows of every kind (or one), newest last, each with a `kind` key."""
        kinds = {"dataset": Dataset, "run": Run, "adapter": Adapter, "index": IndexVersion,
                 "evaluation": Evaluation, "deployment": Deployment, "export": Export}
        if kind is not None and kind not in kinds:
            raise TailorError(f"unknown kind {kind!r}: use one of {', '.join(kinds)}")
        out = []
        with self.session() as s:
            for name, table in kinds.items():
                if kind is not None and name != kind:
                    continue
                for row in s.scalars(select(table)):
                    d = _row_dict(row)
                    d.pop("config", None)
                    d.pop("card", None)
                    d["id"] = _public_id(name, d["id"])
                    d["kind"] = name
                    out.append(d)
        out.sort(key=lambda d: str(d.get("created")))
        return out

    def show(self, ident: str) -> dict[str, Any]:
        """One record by its id, with its kind."""
        with self.session() as s:
            kind, row = _find(s, ident)
            d = _row_dict(row)
            d["id"] = _public_id(kind, d["id"])
            d["kind"] = kind
            return d

    def lineage(self, ident: str) -> list[dict[str, Any]]:
        """dataset -> run -> adapter -> evaluations -> deployments around any of those ids; for an index, every
        version built into its folder."""
        with self.session() as s:
            kind, row = _find(s, ident)
            run: Run | None = None
            if kind == "dataset":
                runs = list(s.scalars(select(Run).where(Run.dataset_id == row.id).order_by(Run.created)))
                chain = [("dataset", row)]
                for r in runs:
                    chain.extend(_chain_from_run(s, r)[1:])
                return [_lineage_item(k, r) for k, r in chain]
            if kind == "run":
                run = row
            elif kind == "adapter":
                run = s.get(Run, row.run_id) if row.run_id else None
            elif kind in ("evaluation", "export"):
                run = s.get(Run, row.run_id) if row.run_id else None
            elif kind == "deployment":
                aid = {"canary": row.canary_adapter_id, "shadow": row.shadow_adapter_id}.get(row.action, row.adapter_id)
                adapter = s.get(Adapter, aid) if aid else None
                run = s.get(Run, adapter.run_id) if adapter and adapter.run_id else None
            if kind == "index":  # every version built into the same folder, oldest first
                versions = s.scalars(select(IndexVersion).where(IndexVersion.path == row.path)
                                     .order_by(IndexVersion.created, IndexVersion.id))
                return [_lineage_item("index", v) for v in versions]
            if run is None:
                return [_lineage_item(kind, row)]
            return [_lineage_item(k, r) for k, r in _chain_from_run(s, run)]

    # ---- deployments -----------------------------------------------------------------------------
    def current(self, stage: str) -> DeploymentState | None:
        with self.session() as s:
            row = _current_row(s, stage)
            if row is None or row.adapter_id is None and row.canary_adapter_id is None:
                return None

            def path(aid: str | None) -> str | None:
                found = s.get(Adapter, aid) if aid else None
                return found.path if found else None

            return DeploymentState(row.id, stage, row.adapter_id, path(row.adapter_id), row.canary_adapter_id,
                                   path(row.canary_adapter_id), row.canary_percent, row.shadow_adapter_id,
                                   path(row.shadow_adapter_id))

    def promote(self, adapter: str, stage: str, *, force: bool = False, canary: float | None = None,
                shadow: bool = False, note: str | None = None) -> dict[str, Any]:
        """Deploy an adapter to a stage, as a canary or as a shadow beside the current one.

        Refused if its gates failed (a shadow too: it is a release candidate). A plain promotion replaces the
        canary and the shadow; a canary keeps the shadow and a shadow keeps the canary.
        """
        if stage not in STAGES:
            raise TailorError(f"unknown stage {stage!r}: use staging or production")
        # One transaction from the gate check to the new row, holding the stage's lock: a concurrent promote or
        # rollback waits, then acts on this row (the history stays one chain), and the gates checked are the ones
        # in force when the row is written.
        with self.session(write=True) as s:
            _lock(s, f"deploy:{stage}")
            found = s.get(Adapter, adapter) or s.get(Adapter, f"ad-{adapter}")
            if found is None:
                raise TailorError(f"adapter {adapter!r} is not registered (see `tailor registry ls --kind adapter`)")
            aid = found.id
            if not Path(found.path).exists():
                raise TailorError(f"adapter {aid}: folder {found.path} no longer exists")
            ev = s.scalars(select(Evaluation).where(Evaluation.adapter_id == aid)
                           .order_by(Evaluation.id.desc()).limit(1)).first()
            problem = None
            if ev is None and stage == "production":
                problem = "has no evaluation recorded (run `tailor eval` first)"
            elif ev is not None and ev.passed is False:
                problem = f"failed its evaluation gates (ev-{ev.id})"
            if problem and not force:
                raise TailorError(f"refusing to promote {aid} to {stage}: it {problem}; use --force to override "
                                  "(the override is recorded)")
            if canary is not None and not 0 < canary < 100:
                raise TailorError("--canary takes a percentage between 0 and 100 (exclusive)")
            if canary is not None and shadow:
                raise TailorError("--canary and --shadow cannot be combined: an adapter either answers users or "
                                  "shadows")
            prev = _current_row(s, stage)
            if canary is not None:
                if prev is None or prev.adapter_id is None:
                    raise TailorError(f"no {stage} deployment to run a canary beside; promote one first")
                row = Deployment(stage=stage, action="canary", adapter_id=prev.adapter_id, canary_adapter_id=aid,
                                 canary_percent=float(canary), shadow_adapter_id=prev.shadow_adapter_id,
                                 previous_id=prev.id, forced=bool(problem), note=note)
            elif shadow:
                row = _shadow_row(prev, stage, aid, forced=bool(problem), note=note)
            else:
                row = Deployment(stage=stage, action="promote", adapter_id=aid, previous_id=prev.id if prev else None,
                                 forced=bool(problem), note=note or problem)
            s.add(row)
            s.flush()
            return _row_dict(row) | {"id": f"dep-{row.id}", "warning": problem}

    def rollback(self, stage: str = "production") -> dict[str, Any]:
        """Return a stage to the state before its current deployment (repeatable: walks further back).

        Serialised with promotions of the stage like `promote`, so two rollbacks at once go back two steps."""
        with self.session(write=True) as s:
            _lock(s, f"deploy:{stage}")
            cur = _current_row(s, stage)
            if cur is None:
                raise TailorError(f"nothing deployed to {stage}")
            target = s.get(Deployment, cur.previous_id) if cur.previous_id else None
            if target is None:
                raise TailorError(f"{stage} has no previous deployment to roll back to")
            # A rollback is the emergency exit: it never brings back a shadow (start one again explicitly).
            row = Deployment(stage=stage, action="rollback", adapter_id=target.adapter_id,
                             canary_adapter_id=target.canary_adapter_id, canary_percent=target.canary_percent,
                             previous_id=target.previous_id, note=f"rollback of dep-{cur.id} to dep-{target.id}")
            s.add(row)
            s.flush()
            return _row_dict(row) | {"id": f"dep-{row.id}"}

    # ---- keys ------------------------------------------------------------------------------------
    def create_key(self, tenant: str, groups: list[str], models: list[str], *, level: int = 0,
                   rate_limit: int | None = None, name: str | None = None) -> tuple[int, str]:
        """A new key: returns (id, secret). Only the hash is stored; the secret cannot be shown again."""
        if not tenant.strip():
            raise TailorError("a key needs a tenant")
        if not models:
            raise TailorError("a key needs at least one model (alias, adapter id, base name, or '*')")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.session(write=True) as s:
            row = ApiKey(key_hash=hash_key(secret), prefix=secret[:10], tenant=tenant.strip(), groups=list(groups),
                         models=list(models), level=level, rate_limit=rate_limit, name=name)
            s.add(row)
            s.flush()
            return row.id, secret

    def find_key(self, secret: str) -> KeyInfo | None:
        """The live key with this secret, or None (unknown or revoked)."""
        with self.session() as s:
            row = s.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(secret))).first()
            if row is None or row.revoked is not None:
                return None
            return KeyInfo(row.id, row.tenant, tuple(row.groups or ()), tuple(row.models or ()), row.level,
                           row.rate_limit)

    def list_keys(self) -> list[dict[str, Any]]:
        with self.session() as s:
            out = []
            for row in s.scalars(select(ApiKey).order_by(ApiKey.id)):
                d = _row_dict(row)
                d.pop("key_hash")
                d["id"] = f"key-{row.id}"
                out.append(d)
            return out

    def revoke_key(self, ident: str) -> None:
        num = ident.removeprefix("key-")
        if not num.isdigit():
            raise TailorError(f"key id {ident!r}: expected key-<n> as shown by `tailor keys ls`")
        with self.session(write=True) as s:
            row = s.get(ApiKey, int(num))
            if row is None:
                raise TailorError(f"no key {ident}")
            if row.revoked is None:
                row.revoked = _now()

    # ---- request log and feedback ----------------------------------------------------------------
    def log_request(self, **fields: Any) -> None:
        with self.session(write=True) as s:
            s.add(RequestLog(**fields))

    def add_feedback(self, request_id: str, rating: str, comment: str | None, key_id: int | None) -> int:
        with self.session(write=True) as s:
            if s.get(RequestLog, request_id) is None:
                raise KeyError(request_id)
            row = Feedback(request_id=request_id, rating=rating, comment=comment, key_id=key_id)
            s.add(row)
            s.flush()
            return row.id

    def requests(self, model: str | None = None, since: dt.datetime | None = None, *,
                 shadow: bool = False) -> list[dict[str, Any]]:
        """Logged requests, oldest first: the users' (default) or only the shadow answers (`shadow=True`)."""
        with self.session() as s:
            q = select(RequestLog).order_by(RequestLog.created)
            q = q.where(RequestLog.shadow_of.is_not(None) if shadow else RequestLog.shadow_of.is_(None))
            if model:
                q = q.where(RequestLog.model == model)
            if since:
                q = q.where(RequestLog.created >= since)
            return [_row_dict(r) for r in s.scalars(q)]

    def shadow_pairs(self, stage: str | None = None, since: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Each shadow answer beside the answer the user got: {"user": row, "shadow": row}, oldest first."""
        user = aliased(RequestLog)
        q = select(RequestLog, user).join(user, user.id == RequestLog.shadow_of).order_by(RequestLog.created)
        if stage:
            q = q.where(RequestLog.stage == stage)
        if since:
            q = q.where(RequestLog.created >= since)
        with self.session() as s:
            return [{"user": _row_dict(u), "shadow": _row_dict(sh)} for sh, u in s.execute(q)]

    def feedback(self) -> list[dict[str, Any]]:
        with self.session() as s:
            return [_row_dict(r) for r in s.scalars(select(Feedback).order_by(Feedback.id))]


def _current_row(s: Session, stage: str) -> Deployment | None:
    """The stage's newest deployment row: its current state."""
    return s.scalars(select(Deployment).where(Deployment.stage == stage)
                     .order_by(Deployment.id.desc()).limit(1)).first()


def _shadow_row(prev: Deployment | None, stage: str, aid: str, *, forced: bool, note: str | None) -> Deployment:
    """The current deployment with `aid` added as its shadow (the canary, if any, stays)."""
    if prev is None or prev.adapter_id is None:
        raise TailorError(f"no {stage} deployment to shadow; promote one first")
    if aid in (prev.adapter_id, prev.canary_adapter_id):
        raise TailorError(f"{aid} already answers {stage} traffic (dep-{prev.id}); shadow a different adapter")
    return Deployment(stage=stage, action="shadow", adapter_id=prev.adapter_id,
                      canary_adapter_id=prev.canary_adapter_id, canary_percent=prev.canary_percent,
                      shadow_adapter_id=aid, previous_id=prev.id, forced=forced, note=note)


def _schema_todo(conn: Any) -> list[tuple[Any, list[Any], list[Any]]]:
    """(table, missing nullable columns, missing indexes) for each table not as this code defines it; a table not
    in the database at all is listed with everything missing. Empty: nothing to create or upgrade."""
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    todo = []
    for table in Base.metadata.sorted_tables:
        if table.name not in tables:
            todo.append((table, list(table.columns), list(table.indexes)))
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in have and c.nullable]
        indexes = {i["name"] for i in insp.get_indexes(table.name)}
        new_indexes = [i for i in table.indexes if i.name not in indexes]
        if missing or new_indexes:
            todo.append((table, missing, new_indexes))
    return todo


def _add_missing_columns(conn: Any) -> None:
    """Add columns (nullable ones only) and indexes newer than the database, so an older registry keeps working.

    Names are quoted by the dialect and types compiled for it, so the same upgrade runs on SQLite and PostgreSQL.
    Runs in the caller's (writing, locked) transaction after create_all, so two processes never add the same
    column and every table exists.
    """
    prep = conn.dialect.identifier_preparer
    for table, missing, new_indexes in _schema_todo(conn):
        for col in missing:
            kind = col.type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {prep.format_table(table)} ADD COLUMN {prep.quote(col.name)} {kind}"))
        for index in new_indexes:
            index.create(conn, checkfirst=True)


_WRITE = "llmtailor_write"  # execution option of the writing engine view (see Registry.session)


def _sqlite_pragmas(timeout: float) -> Any:
    """Per connection: WAL, busy timeout, synchronous=NORMAL, foreign keys; transactions begun by `_sqlite_begin`.

    WAL lets readers (the server's key lookups and deployment poll, `tailor monitor`) go on while one process
    writes, and the writer commit while they read; NORMAL syncs the log at checkpoints, not at every commit (a
    power cut may lose the last commits, never corrupt the file). The driver's own transaction handling is
    switched off (isolation_level None) because it begins a transaction only at the first INSERT/UPDATE, after
    the reads it depends on, and never with BEGIN IMMEDIATE.
    """
    ms = max(1, int(timeout * 1000))

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {ms}")
            cur.execute("PRAGMA foreign_keys = ON")
            try:  # switching a file to WAL needs a moment alone with it; if another process holds it, next time
                cur.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError:
                pass
            cur.execute("PRAGMA synchronous = NORMAL")
        finally:
            cur.close()

    return on_connect


def _sqlite_begin(conn: Any) -> None:
    """BEGIN IMMEDIATE for writing sessions (take the write lock before reading, wait for it up to the busy
    timeout), a plain deferred BEGIN (a consistent snapshot that blocks no one in WAL) for reading ones."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _lock(s: Session | Any, name: str) -> None:
    """Serialise writers of `name` until the transaction ends. PostgreSQL: a transaction advisory lock (waits up to
    lock_timeout; also covers a name with no row yet, e.g. a stage never deployed). SQLite: nothing to do, a
    writing transaction already holds the database's only write lock from its BEGIN IMMEDIATE."""
    bind = s.get_bind() if isinstance(s, Session) else s
    if bind.dialect.name != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(f"llmtailor:{name}".encode()).digest()[:8], "big", signed=True)
    s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def normalize_url(url: str) -> str:
    """`postgres://` (Heroku, many PaaS) and driverless `postgresql://` mean psycopg 3, the driver the extra installs.

    SQLAlchemy 2.0 would otherwise look for psycopg2, and it rejects `postgres://` outright.
    """
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def safe_url(url: str) -> str:
    """The URL as it may be printed: a SQLite file's path, or a server URL with the password masked."""
    if url.startswith("sqlite"):
        return url.split("///", 1)[-1]
    try:
        parsed: URL = make_url(url)
    except ArgumentError:
        return url.split("@")[-1]
    return parsed.render_as_string(hide_password=True)


def _pg_lock_timeout(timeout: float) -> Any:
    """PostgreSQL waits for a lock forever by default; SQLite gives up after its busy timeout. Match SQLite.

    Set with SET (not a startup `options` parameter, which PgBouncer refuses) and committed, so the pool's
    rollback on checkin does not undo it.
    """
    ms = max(1, int(timeout * 1000))

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET lock_timeout = {ms}")
        dbapi_conn.commit()

    return on_connect


def registry_error(url: str, e: Exception) -> TailorError:
    """A registry failure a user can act on: locked, corrupt (SQLite), unreachable (server), never the password."""
    text = str(getattr(e, "orig", e)).strip()
    where = safe_url(url)
    server = not url.startswith("sqlite")
    if "locked" in text or "lock timeout" in text:  # SQLite's busy timeout, PostgreSQL's lock_timeout
        return TailorError(f"registry {where}: database is locked by another process; retry, or stop the other "
                           "writer")
    if not server and isinstance(e, DatabaseError) and ("not a database" in text or "malformed" in text):
        return TailorError(f"registry {where}: file is corrupt ({text}); move it aside and re-register with "
                           "`tailor registry sync`")
    if server and isinstance(e, OperationalError) and _connect_failure(text):
        return TailorError(f"registry at {where} unreachable: {' '.join(text.split())}")
    if isinstance(e, OperationalError):
        return TailorError(f"registry {where}: {text}")
    return TailorError(f"registry {where}: {type(e).__name__}: {text}")


def _connect_failure(text: str) -> bool:
    """True when the message is psycopg's for a connection that never opened (down, wrong host, auth, no db)."""
    return any(m in text for m in ("connection failed", "failed to resolve host", "Connection refused",
                                   "timeout expired", "could not translate host name", "does not exist",
                                   "authentication failed", "server closed the connection"))


def _public_id(kind: str, raw: Any) -> str:
    return {"evaluation": f"ev-{raw}", "deployment": f"dep-{raw}"}.get(kind, str(raw))


def _find(s: Session, ident: str) -> tuple[str, Any]:
    for prefix, kind, table in (("ev-", "evaluation", Evaluation), ("dep-", "deployment", Deployment)):
        if ident.startswith(prefix) and ident[len(prefix):].isdigit():
            row = s.get(table, int(ident[len(prefix):]))
            if row is not None:
                return kind, row
    for kind, table in (("dataset", Dataset), ("adapter", Adapter), ("index", IndexVersion), ("run", Run),
                        ("export", Export)):
        row = s.get(table, ident)
        if row is not None:
            return kind, row
    raise TailorError(f"{ident!r} is not in the registry (see `tailor registry ls`)")


def _chain_from_run(s: Session, run: Run) -> list[tuple[str, Any]]:
    chain: list[tuple[str, Any]] = []
    if run.dataset_id:
        ds = s.get(Dataset, run.dataset_id)
        if ds is not None:
            chain.append(("dataset", ds))
    chain.append(("run", run))
    adapters = list(s.scalars(select(Adapter).where(Adapter.run_id == run.id)))
    for a in adapters:
        chain.append(("adapter", a))
        for ev in s.scalars(select(Evaluation).where(Evaluation.adapter_id == a.id).order_by(Evaluation.id)):
            chain.append(("evaluation", ev))
        chain.extend(("export", x) for x in s.scalars(select(Export).where(Export.adapter_id == a.id)
                                                      .order_by(Export.created)))
        deps = s.scalars(select(Deployment).where((Deployment.adapter_id == a.id)
                                                  | (Deployment.canary_adapter_id == a.id)
                                                  | (Deployment.shadow_adapter_id == a.id)).order_by(Deployment.id))
        chain.extend(("deployment", d) for d in deps)
    return chain


def _lineage_item(kind: str, row: Any) -> dict[str, Any]:
    d = _row_dict(row)
    ident = _public_id(kind, d["id"])
    if kind == "dataset":
        summary = f"{d['path']}"
    elif kind == "run":
        summary = f"{d['method']} on {d['base_model']}, status {d['status']}, loss {d['metrics'].get('final_loss')}"
    elif kind == "adapter":
        summary = d["path"]
    elif kind == "export":
        summary = f"{d['format']} {d['quant'] or ''} {d['path']}".replace("  ", " ")
    elif kind == "index":
        info = d.get("info") or {}
        summary = (f"{info.get('name', d['path'])} version {str(d.get('fingerprint'))[:12]}: "
                   f"{info.get('documents', '?')} documents, {info.get('chunks', '?')} chunks, "
                   f"embedder {(info.get('embedding') or {}).get('model', '?')}, {d['path']}")
    elif kind == "evaluation":
        summary = f"gates {'passed' if d['passed'] else 'FAILED' if d['passed'] is False else 'none'}"
    elif kind == "deployment":
        what = (f"canary {d['canary_adapter_id']} {d['canary_percent']:g}%" if d["action"] == "canary"
                else f"shadow {d['shadow_adapter_id']} beside {d['adapter_id']}" if d["action"] == "shadow"
                else d["adapter_id"])
        summary = f"{d['action']} {d['stage']}: {what}{' (forced)' if d['forced'] else ''}"
    else:
        summary = d.get("path", "")
    return {"kind": kind, "id": ident, "created": d.get("created"), "summary": summary}
