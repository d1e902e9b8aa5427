"""Metadata: CLI defaults, front matter and sidecars merged by the documented rules."""

from __future__ import annotations

import datetime as dt

import pytest

from llmtailor.rag.loaders import SkipFile
from llmtailor.rag.meta import DocMeta, merge, meta_from_mapping, normalize_date, read_sidecar, sidecar_for


def test_file_metadata_overrides_cli_defaults_sidecar_first():
    cli = DocMeta(tenant="acme", access_level=1, groups=("hr", "legal", "sales"), category="misc", date="2024-01-01")
    front = meta_from_mapping({"category": "hr", "groups": "hr, legal", "owner": "ann"}, "front matter")
    side = meta_from_mapping({"category": "payroll", "reviewed": True}, "sidecar")
    m = merge(cli, front, side)
    assert m.tenant == "acme"
    assert m.category == "payroll"  # sidecar > front matter > CLI
    assert m.groups == ("hr", "legal")  # front matter narrows the CLI's groups (it can never widen them)
    assert m.date == "2024-01-01"  # only the CLI gave one
    assert m.extra == {"owner": "ann", "reviewed": True}


def test_access_level_takes_the_most_restrictive():
    assert merge(DocMeta(access_level=2), meta_from_mapping({"access_level": "internal"}, "fm"), None).access_level == 2
    side = meta_from_mapping({"access-level": "restricted"}, "s")
    assert merge(DocMeta(access_level=0), None, side).access_level == 3
    assert merge(DocMeta(), None, None).access_level is None


def test_conflicting_tenants_skip_the_file():
    with pytest.raises(SkipFile, match="conflicting tenants"):
        merge(DocMeta(tenant="acme"), meta_from_mapping({"tenant": "globex"}, "front matter"), None)
    with pytest.raises(SkipFile, match="conflicting tenants"):  # no --tenant means "", which a file cannot change
        merge(DocMeta(), meta_from_mapping({"tenant": "globex"}, "fm"), None)
    assert merge(DocMeta(), meta_from_mapping({"tenant": "globex"}, "record 1"), None,
                 file_sets_tenant=True).tenant == "globex"  # records from code may set their own tenant


@pytest.mark.parametrize(
    "data,match",
    [
        ({"access_level": "top-secret"}, "unknown access level"),
        ({"date": "March 2025"}, "YYYY-MM-DD"),
        ({"date": "2025-02-30"}, "not a real date"),
        ({"groups": {"a": 1}}, "groups must be a list"),
    ],
)
def test_bad_metadata_values_name_where(data, match):
    with pytest.raises(SkipFile, match=match) as e:
        meta_from_mapping(data, "sidecar x.meta.yaml")
    assert str(e.value).startswith("sidecar x.meta.yaml")


def test_dates_normalise():
    assert normalize_date(dt.date(2025, 5, 4), "x") == "2025-05-04"
    assert normalize_date(dt.datetime(2025, 5, 4, 10, 0), "x") == "2025-05-04"
    assert normalize_date("2025-05-04", "x") == "2025-05-04"


def test_sidecar_lookup_and_errors(tmp_path):
    doc = tmp_path / "report.pdf"
    doc.write_bytes(b"%PDF")
    assert sidecar_for(doc) is None and read_sidecar(doc) == (None, "")
    (tmp_path / "report.meta.yaml").write_text("tenant: acme\ngroups: [hr]\n", encoding="utf-8")
    meta, raw = read_sidecar(doc)
    assert meta.tenant == "acme" and meta.groups == ("hr",) and "acme" in raw
    (tmp_path / "report.pdf.meta.yaml").write_text("category: [unclosed\n", encoding="utf-8")
    with pytest.raises(SkipFile, match=r"sidecar report.pdf.meta.yaml line \d+: invalid YAML"):
        read_sidecar(doc)
    (tmp_path / "report.pdf.meta.yaml").write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(SkipFile, match="mapping"):
        read_sidecar(doc)
