"""The registry on a real SQLite file and on a real PostgreSQL server (tests parametrised over both, see
conftest.py): lineage, gated promotion, canary, rollback, shadow, keys, request log, older-database upgrade, and
failures that name their cause (locked, corrupt, unreachable) without failing the pipeline stage that calls the
hooks."""

from __future__ import annotations

import json
import sqlite3

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from llmtailor.config import TailorConfig
from llmtailor.data.versions import DatasetVersion
from llmtailor.errors import TailorError
from llmtailor.registry import hooks
from llmtailor.registry.db import Registry, hash_key, parse_gates
from llmtailor.runs import update_run


def fake_run(runs, run_id: str, gates: bool | None, dataset: str = "abc123"):
    """A run folder with an adapter folder (contents irrelevant to the registry) and optional gate results."""
    d = runs / run_id
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "adapter_config.json").write_text("{}")
    (d / "config.yaml").write_text("train: {method: lora}\n")
    update_run(d, run_id=run_id, status="completed", method="lora", base_model="smollm2-135m-instruct",
               dataset_hash=dataset, dataset_dir=str(runs.parent / "datasets" / dataset),
               adapter_dir=str(d / "adapter"), final_loss=0.42, code_version={"llmtailor": "0.1.0"})
    if gates is not None:
        (d / "eval").mkdir()
        (d / "eval" / "results.json").write_text(json.dumps({"variants": {"tuned": {"json_parse_rate": 0.9}},
                                                             "gates": {"passed": gates, "results": []}}))
    return d


def make_cfg(tmp_path, url: str) -> TailorConfig:
    raw = {"project": "acme", "runs_dir": str(tmp_path / "runs"), "registry": {"url": url}}
    return TailorConfig.model_validate(raw)


@pytest.fixture()
def cfg(tmp_path, registry_url):
    """A project whose registry is a SQLite file or a fresh PostgreSQL database (the test runs for both)."""
    return make_cfg(tmp_path, registry_url)


def raw_rows(url: str, sql: str) -> list[tuple]:
    """Rows read past the registry code, straight from the database."""
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return [tuple(r) for r in con.execute(text(sql))]
    finally:
        engine.dispose()


def test_hooks_record_lineage_from_dataset_to_deployment(cfg, tmp_path):
    version = DatasetVersion("abc123", tmp_path / "datasets" / "abc123", {"train_rows": 10, "eval_rows": 2}, False)
    assert hooks.record_dataset(cfg, version) == "ds-abc123"
    run = fake_run(cfg.runs_dir, "r1", gates=True)
    assert hooks.record_training(cfg, run) == {"run": "r1", "adapter": "ad-r1", "evaluation": "ev-1"}
    reg = Registry.for_config(cfg)
    reg.promote("r1", "staging")
    reg.promote("ad-r1", "production", note="weekly release")
    chain = reg.lineage("ds-abc123")
    assert [c["kind"] for c in chain] == ["dataset", "run", "adapter", "evaluation", "deployment", "deployment"]
    assert [c["kind"] for c in reg.lineage("dep-2")] == [c["kind"] for c in chain]
    assert reg.show("r1")["config"].startswith("train:")
    assert reg.show("ds-abc123")["rows"] == {"train_rows": 10, "eval_rows": 2}
    assert reg.show("ev-1")["passed"] is True
    with pytest.raises(TailorError, match="not in the registry"):
        reg.show("nope")


def test_promotion_is_gated_forced_promotions_are_recorded(cfg):
    reg = Registry.for_config(cfg)
    for name, gates in (("good", True), ("bad", False), ("unevaluated", None)):
        hooks.sync_run(reg, fake_run(cfg.runs_dir, name, gates))
    with pytest.raises(TailorError, match="failed its evaluation gates"):
        reg.promote("bad", "production")
    with pytest.raises(TailorError, match="failed its evaluation gates"):
        reg.promote("bad", "staging")
    with pytest.raises(TailorError, match="no evaluation recorded"):
        reg.promote("unevaluated", "production")
    assert reg.promote("unevaluated", "staging")["warning"] is None
    with pytest.raises(TailorError, match="not registered"):
        reg.promote("missing-run", "production")
    row = reg.promote("bad", "production", force=True)
    assert row["forced"] is True and "gates" in row["warning"]
    assert reg.show(row["id"])["forced"] is True
    assert reg.current("production").adapter_id == "ad-bad"


def test_canary_and_repeated_rollback(cfg):
    reg = Registry.for_config(cfg)
    for name in ("v1", "v2", "v3"):
        hooks.sync_run(reg, fake_run(cfg.runs_dir, name, True))
    with pytest.raises(TailorError, match="no production deployment"):
        reg.promote("v2", "production", canary=5)
    with pytest.raises(TailorError, match="nothing deployed"):
        reg.rollback("production")
    reg.promote("v1", "production")
    with pytest.raises(TailorError, match="no previous"):
        reg.rollback("production")
    reg.promote("v2", "production")
    reg.promote("v3", "production", canary=5)
    cur = reg.current("production")
    assert (cur.adapter_id, cur.canary_adapter_id, cur.canary_percent) == ("ad-v2", "ad-v3", 5.0)
    with pytest.raises(TailorError, match="between 0 and 100"):
        reg.promote("v3", "production", canary=150)
    assert reg.rollback("production")["adapter_id"] == "ad-v2"
    assert reg.current("production").canary_adapter_id is None
    assert reg.rollback("production")["adapter_id"] == "ad-v1"
    with pytest.raises(TailorError, match="no previous"):
        reg.rollback("production")


def test_keys_are_stored_hashed_and_revocable(cfg, tmp_path):
    reg = Registry.for_config(cfg)
    kid, secret = reg.create_key("acme", ["hr"], ["support-bot"], level=1, rate_limit=5)
    assert raw_rows(cfg.registry.url, "SELECT key_hash, prefix FROM api_keys") == [(hash_key(secret), secret[:10])]
    if cfg.registry.url.startswith("sqlite"):
        assert secret not in (tmp_path / "reg.db").read_bytes().decode("latin-1")
    else:  # every column of the row, as text
        assert secret not in str(raw_rows(cfg.registry.url, "SELECT api_keys::text FROM api_keys"))
    info = reg.find_key(secret)
    assert (info.tenant, info.groups, info.models, info.level, info.rate_limit) == ("acme", ("hr",),
                                                                                    ("support-bot",), 1, 5)
    assert info.allows("support-bot") and not info.allows("other")
    assert reg.find_key(secret + "x") is None
    reg.revoke_key(f"key-{kid}")
    assert reg.find_key(secret) is None
    with pytest.raises(TailorError, match="a key needs a tenant"):
        reg.create_key(" ", [], ["*"])


def test_corrupt_and_locked_registry_fail_clearly_but_hooks_only_warn(tmp_path, capsys):
    cfg = make_cfg(tmp_path, f"sqlite:///{tmp_path / 'reg.db'}")
    db = tmp_path / "reg.db"
    db.write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(TailorError, match="corrupt"):
        Registry.for_config(cfg)
    run = fake_run(cfg.runs_dir, "r1", True)
    assert hooks.record_training(cfg, run) is None  # the stage goes on
    assert "could not record run r1" in capsys.readouterr().err
    db.unlink()
    reg = Registry(f"sqlite:///{db}", timeout=0.2)
    lock = sqlite3.connect(db)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TailorError, match="locked"):
            reg.create_key("acme", [], ["*"])
    finally:
        lock.rollback()
        lock.close()
    assert reg.create_key("acme", [], ["*"])[0] == 1


def test_gate_formats():
    assert parse_gates({}) == (None, None)
    assert parse_gates({"gates": {"passed": False, "results": []}})[1] is False
    assert parse_gates({"gates": [{"passed": True}, {"passed": False}]})[1] is False
    assert parse_gates({"gates": {"f1": {"passed": True}, "json": True}})[1] is True


def test_cli_keys_promote_rollback_lineage(cfg, tmp_path):
    from llmtailor.cli.main import app

    cfg_file = tmp_path / "tailor.yaml"
    cfg_file.write_text(cfg.to_yaml())
    fake_run(cfg.runs_dir, "r1", True)
    fake_run(cfg.runs_dir, "r2", False)
    runner = CliRunner()
    c = ["-c", str(cfg_file)]
    r = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--groups", "hr,eng", "--models", "*", *c])
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip().splitlines()[-1]
    assert secret.startswith("tlr-") and Registry.for_config(cfg).find_key(secret).groups == ("hr", "eng")
    assert runner.invoke(app, ["promote", "r1", "--to", "production", *c]).exit_code == 0  # registers the run
    bad = runner.invoke(app, ["promote", "r2", "--to", "production", *c])
    assert bad.exit_code == 1 and isinstance(bad.exception, TailorError)
    assert runner.invoke(app, ["promote", "r2", "--to", "production", "--force", *c]).exit_code == 0
    r = runner.invoke(app, ["rollback", "--json", *c])
    assert json.loads(r.stdout)["adapter_id"] == "ad-r1"
    r = runner.invoke(app, ["registry", "lineage", "ad-r2", "--json", *c])
    chain = json.loads(r.stdout)["lineage"]
    assert [x["kind"] for x in chain] == ["dataset", "run", "adapter", "evaluation", "deployment"]
    assert chain[3]["summary"] == "gates FAILED" and chain[4]["summary"].endswith("(forced)")
    r = runner.invoke(app, ["keys", "revoke", "key-1", *c])
    assert r.exit_code == 0 and Registry.for_config(cfg).find_key(secret) is None
    r = runner.invoke(app, ["registry", "ls", *c])
    assert r.exit_code == 0 and "ad-r2" in r.output
    r = runner.invoke(app, ["registry", "sync", *c])  # prints where the registry is, never its password
    assert r.exit_code == 0 and "synced" in r.output
    password = make_url(cfg.registry.url).password
    assert password is None or password not in r.output


def test_shadow_beside_production_kept_by_canary_cleared_by_promote_and_rollback(cfg):
    reg = Registry.for_config(cfg)
    for name in ("v1", "v2", "v3"):
        hooks.sync_run(reg, fake_run(cfg.runs_dir, name, True))
    hooks.sync_run(reg, fake_run(cfg.runs_dir, "bad", False))
    with pytest.raises(TailorError, match="no production deployment to shadow"):
        reg.promote("v2", "production", shadow=True)
    reg.promote("v1", "production")
    with pytest.raises(TailorError, match="'missing' is not registered"):
        reg.promote("missing", "production", shadow=True)
    with pytest.raises(TailorError, match="failed its evaluation gates"):
        reg.promote("bad", "production", shadow=True)
    with pytest.raises(TailorError, match="already answers production"):
        reg.promote("v1", "production", shadow=True)
    with pytest.raises(TailorError, match="cannot be combined"):
        reg.promote("v2", "production", shadow=True, canary=10)
    row = reg.promote("v2", "production", shadow=True, note="try v2 on real traffic")
    assert (row["action"], row["adapter_id"], row["shadow_adapter_id"]) == ("shadow", "ad-v1", "ad-v2")
    cur = reg.current("production")
    assert (cur.adapter_id, cur.shadow_adapter_id) == ("ad-v1", "ad-v2")
    assert cur.shadow_path == str(cfg.runs_dir / "v2" / "adapter")
    reg.promote("v3", "production", canary=10)  # a canary keeps the shadow
    cur = reg.current("production")
    assert (cur.canary_adapter_id, cur.shadow_adapter_id) == ("ad-v3", "ad-v2")
    reg.rollback("production")  # back to the shadow row's state, but a rollback never keeps a shadow
    cur = reg.current("production")
    assert (cur.adapter_id, cur.canary_adapter_id, cur.shadow_adapter_id) == ("ad-v1", None, None)
    reg.promote("v2", "production", shadow=True)
    reg.promote("v3", "production")  # a plain promotion replaces the shadow
    assert reg.current("production").shadow_adapter_id is None
    assert [c["summary"] for c in reg.lineage("ad-v2") if c["kind"] == "deployment"][0] == \
        "shadow production: shadow ad-v2 beside ad-v1"


def test_shadow_report_pairs_agreement_and_latency(cfg):
    from llmtailor.registry.shadow import shadow_report

    reg = Registry.for_config(cfg)
    common = {"key_id": 1, "tenant": "acme", "model": "live", "prompt_tokens": 3, "completion_tokens": 2,
              "guardrails": [], "prompt": "q"}
    for i, (user, shadow, status) in enumerate([("yes", " yes", 200), ("yes", "no", 200), ("a", None, 500)]):
        reg.log_request(id=f"r{i}", adapter_id="ad-v1", status=200, latency_ms=100.0 + i, answer=user, **common)
        reg.log_request(id=f"r{i}-shadow", adapter_id="ad-v2", status=status, latency_ms=50.0, answer=shadow,
                        shadow_of=f"r{i}", stage="production", **common)
    assert [r["id"] for r in reg.requests()] == ["r0", "r1", "r2"]  # shadow rows are not user traffic
    assert len(reg.requests(shadow=True)) == 3
    report = shadow_report(reg, stage="production")
    (s,) = report["summaries"]
    assert (s["shadow_adapter"], s["requests"], s["compared"], s["agreement"], s["shadow_errors"]) == \
        ("ad-v2", 3, 2, 0.5, 1)
    assert s["user_latency"] == {"mean_ms": 101.0, "p50_ms": 101.0} and s["shadow_latency"]["p50_ms"] == 50.0
    assert [p["same"] for p in report["pairs"]] == [True, False, None]
    assert shadow_report(reg, stage="staging")["summaries"] == []


def test_older_database_gets_the_new_columns(registry_url):
    engine = create_engine(registry_url)  # the request log as it was before shadow_of, stage and routed_to
    with engine.begin() as con:
        con.execute(text("CREATE TABLE requests (id VARCHAR(64) PRIMARY KEY, created TIMESTAMP, key_id INTEGER, "
                         "tenant VARCHAR(128), model TEXT NOT NULL, adapter_id TEXT, status INTEGER NOT NULL, "
                         "latency_ms FLOAT NOT NULL, prompt_tokens INTEGER NOT NULL, "
                         "completion_tokens INTEGER NOT NULL, guardrails JSON NOT NULL, prompt TEXT, answer TEXT)"))
        con.execute(text("INSERT INTO requests VALUES ('old', '2025-01-01 00:00:00', 1, 'acme', 'm', NULL, 200, 1.0, "
                         "1, 1, '[]', NULL, NULL)"))
    engine.dispose()
    reg = Registry(registry_url)
    reg.log_request(id="new", model="m", status=200, latency_ms=1.0, prompt_tokens=1, completion_tokens=1,
                    guardrails=[], routed_to="big")
    assert [(r["id"], r["shadow_of"], r["routed_to"]) for r in reg.requests()] == [("old", None, None),
                                                                                    ("new", None, "big")]
    assert "ix_requests_shadow_of" in {i["name"] for i in inspect(reg.engine).get_indexes("requests")}
    reg.close()
    Registry(registry_url).close()  # opening an up-to-date database again changes nothing


def test_postgres_unreachable_and_locked_fail_clearly_without_the_password(pg_cluster, tmp_path, capsys):
    url = pg_cluster.database()
    password = make_url(url).password
    down = make_url(url).set(port=_unused_port())
    down_url = down.render_as_string(hide_password=False)
    with pytest.raises(TailorError) as err:
        Registry(down_url, timeout=2)
    msg = str(err.value)
    assert msg.startswith(f"registry at postgresql+psycopg://tailor:***@127.0.0.1:{down.port}/")
    assert "unreachable" in msg and "Connection refused" in msg and password not in msg
    with pytest.raises(TailorError, match=r'unreachable: .*database "nope" does not exist'):
        Registry(make_url(url).set(database="nope").render_as_string(hide_password=False))
    cfg = make_cfg(tmp_path, down_url)
    assert hooks.record_training(cfg, fake_run(cfg.runs_dir, "r1", True)) is None  # the stage goes on
    err_out = capsys.readouterr().err
    assert "could not record run r1" in err_out and password not in err_out
    # A driverless URL is read as psycopg 3 and reaches the same server.
    reg = Registry(url.replace("postgresql+psycopg://", "postgresql://"), timeout=0.3)
    assert reg.display_url == url.replace(password, "***")
    import psycopg

    with psycopg.connect(pg_cluster.admin_conninfo().replace("dbname=postgres", f"dbname={make_url(url).database}")) \
            as lock:
        lock.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")  # held until the block's transaction ends
        with pytest.raises(TailorError, match="locked by another process"):
            reg.create_key("acme", [], ["*"])
    assert reg.create_key("acme", [], ["*"])[0] == 1
    reg.close()


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_promote_shadow_and_shadow_report(cfg, tmp_path):
    from llmtailor.cli.main import app

    cfg_file = tmp_path / "tailor.yaml"
    cfg_file.write_text(cfg.to_yaml())
    fake_run(cfg.runs_dir, "r1", True)
    fake_run(cfg.runs_dir, "r2", True)
    runner = CliRunner()
    c = ["-c", str(cfg_file)]
    assert runner.invoke(app, ["promote", "r1", *c]).exit_code == 0
    missing = runner.invoke(app, ["promote", "nope", "--shadow", *c])
    assert missing.exit_code == 1 and "'nope' is not registered" in str(missing.exception)
    r = runner.invoke(app, ["promote", "r2", "--shadow", "--json", *c])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shadow_adapter_id"] == "ad-r2"
    r = runner.invoke(app, ["registry", "ls", "--kind", "deployment", "--json", *c])
    assert [d["shadow_adapter_id"] for d in json.loads(r.stdout)["items"]] == [None, "ad-r2"]
    assert runner.invoke(app, ["registry", "ls", "--kind", "deployment", *c]).exit_code == 0
    r = runner.invoke(app, ["registry", "shadow", "--json", *c])
    assert r.exit_code == 0 and json.loads(r.stdout)["summaries"] == []
    assert "no shadow answers" in runner.invoke(app, ["registry", "shadow", *c]).output
    assert json.loads(runner.invoke(app, ["rollback", "--json", *c]).stdout)["shadow_adapter_id"] is None
