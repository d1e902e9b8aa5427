"""Security review (issue 12), ingest side: file metadata cannot widen the command's access scope, symbolic links
cannot pull files from outside the ingested folder, and de-duplication never crosses tenants or access scopes.

Everything goes through a real ingest of real files into a LanceDB index in tmp_path, then a search as the caller
whose view matters (another tenant, another group) through `Retriever`: what is visible is what the ACL gives.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmtailor.rag.acl import Caller
from llmtailor.rag.index import Index
from llmtailor.rag.ingest import IngestReport, ingest
from llmtailor.rag.loaders import SkipFile
from llmtailor.rag.meta import DocMeta, merge, meta_from_mapping
from llmtailor.rag.search import Retriever
from tests.unit.rag.conftest import CountingEmbedder, rag_config

PAYROLL = "The payroll bonus table lists every salary band and the executive bonus pool for this year.\n"
HANDBOOK = "The employee handbook explains holiday booking, office hours and the expense policy.\n"
SECRET = "Outside secret: the root password of the build server is hunter2 and must never be shared.\n"


def _ingest(paths: list[Path], idx: Path, **meta) -> IngestReport:
    return ingest(paths, idx, rag_config(), embedder=CountingEmbedder(), defaults=DocMeta(**meta))


def visible(idx: Path, caller: Caller, query: str) -> list[str]:
    """File names of what `caller` finds for `query` (every mode, generous top-k)."""
    cfg = rag_config()
    r = Retriever(Index.open(idx, cfg), cfg.search, parallel=False)
    try:
        names: set[str] = set()
        for mode in ("dense", "sparse", "hybrid"):
            names |= {Path(h.chunk.source).name for h in r.search(query, caller=caller, mode=mode, top_k=20).hits}
        return sorted(names)
    finally:
        r.close()


def reasons(rep: IngestReport) -> dict[str, str]:
    return {Path(s.file).name: s.reason for s in rep.skipped}


# ------------------------------------------------------------------ finding 4: metadata may only narrow


@pytest.mark.parametrize("front", ["groups: []", 'groups: ""', "groups: [sales]"])
def test_front_matter_cannot_widen_the_command_groups(tmp_path, front):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "payroll.md").write_text(f"---\n{front}\n---\n# Payroll\n\n{PAYROLL}", encoding="utf-8")
    idx = tmp_path / "idx"
    rep = _ingest([docs], idx, tenant="acme", groups=("hr",))
    assert visible(idx, Caller("acme", ("sales",), 3), "payroll bonus salary") == []
    assert visible(idx, Caller("acme", (), 3), "payroll bonus salary") == []
    if "sales" in front:  # disjoint from --groups: nobody the command allowed is left, so the file is refused
        assert "groups" in reasons(rep)["payroll.md"]
    else:  # an empty value keeps the command's groups
        assert rep.skipped == [] and visible(idx, Caller("acme", ("hr",), 3), "payroll bonus") == ["payroll.md"]


def test_sidecar_narrows_to_the_intersection_with_the_command_groups(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "payroll.txt").write_text(PAYROLL, encoding="utf-8")
    (docs / "payroll.txt.meta.yaml").write_text("groups: [hr, finance]\n", encoding="utf-8")
    idx = tmp_path / "idx"
    rep = _ingest([docs], idx, tenant="acme", groups=("hr", "legal"))
    assert rep.skipped == []
    assert visible(idx, Caller("acme", ("hr",), 3), "payroll bonus") == ["payroll.txt"]
    assert visible(idx, Caller("acme", ("finance",), 3), "payroll bonus") == []  # the file cannot add finance
    assert visible(idx, Caller("acme", ("legal",), 3), "payroll bonus") == []  # and it may drop legal


def test_file_groups_still_narrow_an_ingest_without_groups(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "payroll.md").write_text(f"---\ngroups: [hr]\n---\n{PAYROLL}", encoding="utf-8")
    idx = tmp_path / "idx"
    assert _ingest([docs], idx, tenant="acme").skipped == []
    assert visible(idx, Caller("acme", ("hr",), 3), "payroll bonus") == ["payroll.md"]
    assert visible(idx, Caller("acme", ("sales",), 3), "payroll bonus") == []


def test_sidecar_and_front_matter_each_only_narrow(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "payroll.md").write_text(f"---\ngroups: [hr]\n---\n{PAYROLL}", encoding="utf-8")
    (docs / "payroll.md.meta.yaml").write_text("groups: [hr, sales]\n", encoding="utf-8")
    idx = tmp_path / "idx"
    assert _ingest([docs], idx, tenant="acme").skipped == []
    assert visible(idx, Caller("acme", ("sales",), 3), "payroll bonus") == []
    assert visible(idx, Caller("acme", ("hr",), 3), "payroll bonus") == ["payroll.md"]


@pytest.mark.parametrize("where", ["front matter", "sidecar"])
def test_a_file_cannot_move_itself_into_a_tenant_the_command_did_not_name(tmp_path, where):
    docs = tmp_path / "docs"
    docs.mkdir()
    if where == "sidecar":
        (docs / "notice.txt").write_text(PAYROLL, encoding="utf-8")
        (docs / "notice.meta.yaml").write_text("tenant: globex\n", encoding="utf-8")
        name = "notice.txt"
    else:
        (docs / "notice.md").write_text(f"---\ntenant: globex\n---\n{PAYROLL}", encoding="utf-8")
        name = "notice.md"
    idx = tmp_path / "idx"
    rep = _ingest([docs], idx)  # no --tenant: the command's tenant is ""
    assert "tenant" in reasons(rep)[name]
    assert visible(idx, Caller("globex", (), 3), "payroll bonus") == []
    rep = _ingest([docs], tmp_path / "idx2", tenant="acme")
    assert "tenant" in reasons(rep)[name]


def test_a_file_that_turns_wider_is_refused_and_its_old_chunks_leave(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "payroll.txt").write_text(PAYROLL, encoding="utf-8")
    side = docs / "payroll.txt.meta.yaml"
    side.write_text("groups: [hr]\n", encoding="utf-8")
    idx = tmp_path / "idx"
    assert _ingest([docs], idx, tenant="acme", groups=("hr",)).files_new == 1
    assert visible(idx, Caller("acme", ("hr",), 3), "payroll bonus") == ["payroll.txt"]
    side.write_text("groups: [sales]\n", encoding="utf-8")
    rep = _ingest([docs], idx, tenant="acme", groups=("hr",))
    assert "groups" in reasons(rep)["payroll.txt"] and rep.files_deleted == 1
    for groups in (("hr",), ("sales",), ()):
        assert visible(idx, Caller("acme", groups, 3), "payroll bonus") == []


def test_an_index_built_under_the_old_rules_is_corrected_by_the_next_ingest(tmp_path, monkeypatch):
    """Files the old rules let widen their groups are unchanged on disk: the rules version in each source hash still
    makes the next ingest re-check them (reusing their vectors), and the widened chunks leave."""
    import llmtailor.rag.ingest as ingest_mod

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "payroll.md").write_text(f"---\ngroups: []\n---\n{PAYROLL}", encoding="utf-8")
    (docs / "notice.md").write_text(f"---\ngroups: [sales]\n---\n{HANDBOOK}", encoding="utf-8")
    idx = tmp_path / "idx"

    def old_merge(cli: DocMeta, front: DocMeta | None, side: DocMeta | None, **_: object) -> DocMeta:
        own = side if side is not None and side.groups is not None else front
        return DocMeta(tenant=cli.tenant, groups=own.groups if own is not None else cli.groups)

    with monkeypatch.context() as m:
        m.setattr(ingest_mod, "merge", old_merge)
        m.setattr(ingest_mod, "RULES", 1)
        assert _ingest([docs], idx, tenant="acme", groups=("hr",)).files_new == 2
    assert visible(idx, Caller("acme", (), 3), "payroll bonus") == ["payroll.md"]  # widened by the old rules
    e = CountingEmbedder()
    rep = ingest([docs], idx, rag_config(), embedder=e, defaults=DocMeta(tenant="acme", groups=("hr",)))
    assert rep.files_changed == 1 and e.embedded == [] and "groups" in reasons(rep)["notice.md"]
    assert visible(idx, Caller("acme", (), 3), "payroll bonus salary") == []
    assert visible(idx, Caller("acme", ("sales",), 3), "handbook holiday booking") == []
    assert visible(idx, Caller("acme", ("hr",), 3), "payroll bonus") == ["payroll.md"]


def test_merge_rules_directly():
    cli = DocMeta(tenant="acme", groups=("hr", "legal"), access_level=1)
    assert merge(cli, meta_from_mapping({"groups": []}, "fm"), None).groups == ("hr", "legal")
    assert merge(cli, meta_from_mapping({"groups": "legal, sales"}, "fm"), None).groups == ("legal",)
    assert merge(cli, None, meta_from_mapping({"access_level": 0}, "s")).access_level == 1
    with pytest.raises(SkipFile, match="groups"):
        merge(cli, meta_from_mapping({"groups": ["sales"]}, "fm"), None)
    with pytest.raises(SkipFile, match="tenant"):
        merge(DocMeta(), meta_from_mapping({"tenant": "globex"}, "fm"), None)
    assert merge(DocMeta(), meta_from_mapping({"tenant": ""}, "fm"), None).tenant in ("", None)
    # Records come from code (the caller chose their metadata, as with --tenant): they may name their tenant.
    assert merge(DocMeta(), meta_from_mapping({"tenant": "globex"}, "record 1"), None,
                 file_sets_tenant=True).tenant == "globex"


# ------------------------------------------------------------------ finding 6: symlinks and de-duplication


@pytest.fixture()
def outside(tmp_path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_text(SECRET, encoding="utf-8")
    (d / "notes").mkdir()
    (d / "notes" / "more.txt").write_text(SECRET.replace("hunter2", "swordfish"), encoding="utf-8")
    (d / "meta.yaml").write_text("category: stolen\n", encoding="utf-8")
    return d


def test_symlinks_out_of_the_folder_are_skipped_and_reported_not_read(tmp_path, outside, monkeypatch):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "handbook.txt").write_text(HANDBOOK, encoding="utf-8")
    (docs / "secret.txt").symlink_to(outside / "secret.txt")
    (docs / "sub" / "up.txt").symlink_to(Path("..") / ".." / "outside" / "secret.txt")
    (docs / "notes").symlink_to(outside / "notes", target_is_directory=True)
    (docs / "inside.txt").symlink_to(docs / "handbook.txt")  # inside the folder: allowed (a duplicate here)
    read: list[str] = []
    real = Path.read_bytes

    def spy(self: Path) -> bytes:
        read.append(os.path.realpath(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    idx = tmp_path / "idx"
    rep = _ingest([docs], idx, tenant="acme")
    r = reasons(rep)
    for name in ("secret.txt", "up.txt", "notes"):
        assert "symbolic link" in r[name] and "outside" in r[name], r
    assert not any(p.startswith(str(outside.resolve())) for p in read), read
    assert "handbook.txt" not in r and r["inside.txt"].startswith("duplicate of")
    names = visible(idx, Caller("acme", (), 3), "root password hunter2 swordfish build server")
    assert "secret.txt" not in names and "up.txt" not in names and "more.txt" not in names


def test_a_sidecar_linked_from_outside_is_not_read(tmp_path, outside):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.txt").write_text(HANDBOOK, encoding="utf-8")
    (docs / "handbook.txt.meta.yaml").symlink_to(outside / "meta.yaml")
    idx = tmp_path / "idx"
    rep = _ingest([docs], idx, tenant="acme")
    assert "symbolic link" in reasons(rep)["handbook.txt"]
    assert visible(idx, Caller("acme", (), 3), "holiday booking office hours") == []


def test_identical_files_of_two_tenants_are_both_indexed_and_never_named_across(tmp_path):
    acme, globex = tmp_path / "acme-private", tmp_path / "globex"
    acme.mkdir()
    globex.mkdir()
    (acme / "acme-layoff-plan.txt").write_text(HANDBOOK, encoding="utf-8")
    (globex / "handbook.txt").write_text(HANDBOOK, encoding="utf-8")
    idx = tmp_path / "idx"
    assert _ingest([acme], idx, tenant="acme").skipped == []
    rep = _ingest([globex], idx, tenant="globex")
    assert rep.skipped == [] and rep.files_new == 1
    assert "acme" not in str(rep.as_dict()).replace(str(tmp_path), "")
    assert visible(idx, Caller("globex", (), 3), "holiday booking office hours") == ["handbook.txt"]
    assert visible(idx, Caller("acme", (), 3), "holiday booking office hours") == ["acme-layoff-plan.txt"]
    # Re-running both is a no-op: nothing flips between the two tenants.
    assert _ingest([acme], idx, tenant="acme").files_unchanged == 1
    again = _ingest([globex], idx, tenant="globex")
    assert again.files_unchanged == 1 and again.skipped == []


def test_same_content_under_different_access_scopes_is_not_merged(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a-hr.txt").write_text(PAYROLL, encoding="utf-8")
    (docs / "a-hr.txt.meta.yaml").write_text("groups: [hr]\n", encoding="utf-8")
    (docs / "b-open.txt").write_text(PAYROLL, encoding="utf-8")
    (docs / "c-conf.txt").write_text(PAYROLL, encoding="utf-8")
    (docs / "c-conf.txt.meta.yaml").write_text("access_level: confidential\n", encoding="utf-8")
    (docs / "d-open-copy.txt").write_text(PAYROLL, encoding="utf-8")  # same scope as b-open: still de-duplicated
    idx = tmp_path / "idx"
    rep = _ingest([docs], idx, tenant="acme")
    r = reasons(rep)
    assert set(r) == {"d-open-copy.txt"} and r["d-open-copy.txt"] == f"duplicate of {_rel(docs / 'b-open.txt')} " \
                                                                      "(same content)"
    assert visible(idx, Caller("acme", (), 0), "payroll bonus") == ["b-open.txt"]
    assert visible(idx, Caller("acme", ("hr",), 0), "payroll bonus") == ["a-hr.txt", "b-open.txt"]
    assert visible(idx, Caller("acme", (), 3), "payroll bonus") == ["b-open.txt", "c-conf.txt"]


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)
