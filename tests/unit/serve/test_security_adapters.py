"""Security review (issue 12), findings 2 and 3, tested from outside as a hostile client or another tenant:
a request's `model` must not become a path to any adapter folder on the disk, and an adapter the operator
restricted to some tenants (through its aliases) must not be reachable by its raw id by the others."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from llmtailor.registry.db import Registry
from llmtailor.serve.config import AliasConfig
from tests.unit.serve.conftest import auth, build_engine, make_adapter

MSG = [{"role": "user", "content": "hello"}]


def chat(c, key: str, model: str):
    return c.post("/v1/chat/completions", headers=auth(key), json={"model": model, "messages": MSG, "max_tokens": 2})


def not_found(resp) -> None:
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["code"] == "model_not_found"


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A run-shaped folder with a valid adapter, outside the project's runs_dir (another project on the disk)."""
    run = tmp_path_factory.mktemp("other-project") / "runs" / "stolen"
    make_adapter(run / "adapter", 21)
    return run


@pytest.fixture(scope="module")
def initech(project) -> str:
    """A third tenant whose key allows every model ('*'), and which no alias names."""
    reg = Registry(project["cfg"].registry.url)
    try:
        return reg.create_key("initech", [], ["*"])[1]
    finally:
        reg.close()


@pytest.fixture()
def make_client(project, tmp_path):
    """TestClient over an app on a modified copy of the project (own registry copy, so promotions stay here)."""
    from fastapi.testclient import TestClient

    from llmtailor.serve.app import create_app

    made = []

    def make(aliases: dict[str, AliasConfig] | None = None, runs_dir: Path | None = None):
        cfg = project["cfg"]
        db = tmp_path / f"registry-{len(made)}.db"
        shutil.copy(project["root"] / "registry.db", db)
        serve = cfg.serve.model_copy(update={"aliases": {**cfg.serve.aliases, **(aliases or {})}})
        registry = cfg.registry.model_copy(update={"url": f"sqlite:///{db}"})
        cfg = cfg.model_copy(update={"serve": serve, "registry": registry, "runs_dir": runs_dir or cfg.runs_dir})
        reg = Registry(cfg.registry.url)
        c = TestClient(create_app(cfg, engine=build_engine(max_batch_size=4, batch_wait_ms=2), registry=reg))
        c.__enter__()
        c.reg, c.server = reg, c.app.state.server
        made.append(c)
        return c

    yield make
    for c in made:
        c.__exit__(None, None, None)
        c.reg.close()


# ---- finding 2: `model` is a name, never a path ----------------------------------------------------------------
def test_model_cannot_name_a_folder_outside_runs_dir(client, project, outside):
    key = project["keys"]["acme"]
    runs = project["cfg"].runs_dir
    for model in (os.path.relpath(outside, runs),  # ../../other-project/runs/stolen
                  str(outside),  # absolute: runs_dir / "/abs" is "/abs"
                  f"run-good/../{os.path.relpath(outside, runs)}",
                  str(outside / "adapter")):
        not_found(chat(client, key, model))
    assert client.app_server.engine.adapter_loads == 0  # nothing was loaded (no DoRA copy of the base either)
    assert chat(client, key, "run-other").status_code == 200  # a plain run id still works


def test_a_symlinked_run_folder_pointing_outside_is_refused(make_client, project, outside, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "linked").symlink_to(outside, target_is_directory=True)
    shutil.copytree(project["cfg"].runs_dir / "run-other", runs / "run-inside")
    c = make_client(runs_dir=runs)
    key = project["keys"]["acme"]
    not_found(chat(c, key, "linked"))
    assert c.server.engine.adapter_loads == 0
    assert chat(c, key, "run-inside").status_code == 200


def test_alias_folders_from_the_operator_config_stay_allowed(make_client, project, outside):
    c = make_client({"ext": AliasConfig(adapter=str(outside / "adapter"))})
    r = chat(c, project["keys"]["acme"], "ext")
    assert r.status_code == 200, r.text


# ---- finding 3: tenant restrictions hold for raw ids too -------------------------------------------------------
def test_restricted_adapter_is_not_reachable_by_raw_id_from_another_tenant(client, project, initech):
    # run-good is the target of support-bot (acme, globex) and acme-only (acme): initech's '*' key may not use it.
    for model in ("ad-run-good", "run-good"):
        not_found(chat(client, initech, model))
    assert client.app_server.engine.adapter_loads == 0
    assert chat(client, initech, "ad-run-other").status_code == 200  # no alias restricts run-other
    assert chat(client, project["keys"]["acme"], "ad-run-good").status_code == 200


def test_models_lists_to_a_tenant_only_what_it_may_call(client, project, initech):
    names = {m["id"] for m in client.get("/v1/models", headers=auth(initech)).json()["data"]}
    assert {"ad-run-good", "acme-only", "support-bot"}.isdisjoint(names)
    assert {"tiny", "ad-run-other", "guarded"} <= names
    for model in names - {"hashing", "live", "acme"}:  # every listed model answers (live/acme: nothing deployed)
        assert chat(client, initech, model).status_code == 200, model
    acme = {m["id"] for m in client.get("/v1/models", headers=auth(project["keys"]["acme"])).json()["data"]}
    assert {"ad-run-good", "acme-only", "support-bot", "ad-run-other"} <= acme


def test_restricted_alias_folder_is_not_reachable_by_its_path(make_client, project, outside, initech):
    c = make_client({"ext": AliasConfig(adapter=str(outside / "adapter"), tenants=["acme"])})
    assert chat(c, project["keys"]["acme"], "ext").status_code == 200  # loads it, under its folder's name
    not_found(chat(c, initech, str(outside / "adapter")))
    not_found(chat(c, initech, "ext"))


def test_restricted_stage_is_not_reachable_by_project_name(make_client, project, initech):
    c = make_client({"acme-live": AliasConfig(adapter="@production", tenants=["acme"])})
    c.reg.promote("run-other", "production")
    c.server.refresh_deployments()
    acme = project["keys"]["acme"]
    assert chat(c, acme, "acme-live").status_code == 200
    assert chat(c, acme, "acme").status_code == 200  # the project name follows production
    for model in ("acme", "acme-live", "ad-run-other"):  # the deployed adapter is acme's while it is deployed
        not_found(chat(c, initech, model))
    names = {m["id"] for m in c.get("/v1/models", headers=auth(initech)).json()["data"]}
    assert {"acme", "acme-live", "ad-run-other"}.isdisjoint(names)
    assert {"acme", "acme-live", "ad-run-other"} <= {m["id"] for m in c.get("/v1/models", headers=auth(acme))
                                                    .json()["data"]}
