"""`--where` parsing, SQL compilation, the reference semantics, and the ACL rule."""

from __future__ import annotations

import pytest

from llmtailor.errors import TailorError
from llmtailor.rag.acl import Caller, acl_filter, can_see, level_name, parse_groups, parse_level
from llmtailor.rag.filters import And, Cmp, HasAny, IsEmpty, Not, Or, matches, parse_where, to_sql

ROW = {"tenant": "acme", "category": "hr", "access_level": 1, "page": 3, "date": "2025-06-30", "groups": ["hr"],
       "source": "/d/a.md", "title": "A", "file_type": "markdown", "heading_path": "", "chunk_index": 0}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("category = 'hr'", Cmp("category", "=", "hr")),
        ("category <> 'hr'", Cmp("category", "!=", "hr")),
        ("page >= 2", Cmp("page", ">=", 2)),
        ("access_level <= 'internal'", Cmp("access_level", "<=", 1)),
        ("category IN ('hr', 'it')", Cmp("category", "in", ("hr", "it"))),
        ("category not in ('hr')", Cmp("category", "notin", ("hr",))),
        ("date >= '2025-01-01'", And((Cmp("date", "!=", ""), Cmp("date", ">=", "2025-01-01")))),
        ("title = 'it''s'", Cmp("title", "=", "it's")),
        (
            "category = 'hr' AND NOT (page = 1 OR page = 2)",
            And((Cmp("category", "=", "hr"), Not(Or((Cmp("page", "=", 1), Cmp("page", "=", 2)))))),
        ),
    ],
)
def test_parse_where(text, expected):
    assert parse_where(text) == expected


def test_and_binds_tighter_than_or():
    assert parse_where("page = 1 OR page = 2 AND category = 'x'") == Or(
        (Cmp("page", "=", 1), And((Cmp("page", "=", 2), Cmp("category", "=", "x"))))
    )


@pytest.mark.parametrize(
    "text,match",
    [
        ("category = 'hr'; DROP TABLE x", "one expression only"),
        ("category = 'hr' -- comment", "SQL comments"),
        ('category = "hr"', "double quotes"),
        ("secret = 'x'", "unknown column 'secret'"),
        ("groups = 'hr'", "unknown column 'groups'"),
        ("tenant = 'other' OR 1 = 1", "expected a column name"),
        ("category > 'a'", "only supports =, != and IN"),
        ("page = 'three'", "takes an integer"),
        ("category = 3", "takes a quoted string"),
        ("category = 'hr' AND", "unexpected end"),
        ("(category = 'hr'", "missing"),
        ("category = 'hr' page = 1", "unexpected"),
        ("category ~ 'x'", "unexpected character"),
        ("   ", None),
    ],
)
def test_bad_where_is_refused_with_reason(text, match):
    if match is None:
        assert parse_where(text) is None
        return
    with pytest.raises(TailorError, match=match):
        parse_where(text)


def test_sql_compilation_escapes_and_handles_empty_lists():
    assert to_sql(Cmp("title", "=", "o'neil")) == "title = 'o''neil'"
    assert to_sql(Cmp("category", "in", ())) == "FALSE"
    assert to_sql(Cmp("category", "notin", ())) == "TRUE"
    assert to_sql(HasAny("groups", ("hr", "it"))) == "array_has_any(groups, ['hr', 'it'])"
    assert to_sql(IsEmpty("groups")) == "groups_empty = true"
    assert to_sql(And((Cmp("page", ">", 1), Not(Cmp("tenant", "=", "a"))))) == "(page > 1) AND (NOT (tenant = 'a'))"
    assert to_sql(None) is None


def test_reference_semantics():
    assert matches(parse_where("category = 'hr' AND page > 2"), ROW)
    assert not matches(parse_where("date < '2025-01-01'"), ROW)
    assert not matches(parse_where("date < '2025-01-01'"), {**ROW, "date": ""})  # unknown date never in a range
    assert matches(HasAny("groups", ("x", "hr")), ROW) and not matches(IsEmpty("groups"), ROW)
    assert matches(None, ROW)


def test_levels_and_groups_parse():
    assert [parse_level(x) for x in ("public", "Internal", "confidential", "restricted", "7", 2, None)] == [
        0, 1, 2, 3, 7, 2, 0]
    for bad in ("secret", -1, True):
        with pytest.raises(TailorError):
            parse_level(bad)
    assert level_name(2) == "confidential" and level_name(9) == "9"
    assert parse_groups(" hr, ,legal,hr ") == ("hr", "legal")
    assert parse_groups(["a", "b"]) == ("a", "b") and parse_groups(None) == ()


@pytest.mark.parametrize(
    "caller,chunk,visible",
    [
        (Caller("acme", (), 0), {"tenant": "acme", "access_level": 0, "groups": []}, True),
        (Caller("acme", (), 0), {"tenant": "globex", "access_level": 0, "groups": []}, False),
        (Caller("", (), 3), {"tenant": "acme", "access_level": 0, "groups": []}, False),
        (Caller("acme", (), 1), {"tenant": "acme", "access_level": 2, "groups": []}, False),
        (Caller("acme", ("hr",), 3), {"tenant": "acme", "access_level": 3, "groups": ["hr", "legal"]}, True),
        (Caller("acme", ("eng",), 3), {"tenant": "acme", "access_level": 0, "groups": ["hr"]}, False),
        (Caller("acme", (), 3), {"tenant": "acme", "access_level": 0, "groups": ["hr"]}, False),
    ],
)
def test_acl_filter_agrees_with_the_rule(caller, chunk, visible):
    assert can_see(caller, chunk) is visible
    assert matches(acl_filter(caller), chunk) is visible


def test_caller_of_cli_values():
    c = Caller.of(" acme ", "hr,eng", "internal")
    assert c == Caller("acme", ("hr", "eng"), 1)
    assert Caller.of() == Caller("", (), 0)


def test_in_list_never_matches_a_longer_value_cut_to_the_column_width():
    from llmtailor.rag.filters import Columns, to_mask

    cols = Columns(2, {"tenant": ["acme", "glob"]}, {})
    mask = to_mask(parse_where("tenant IN ('acme-evil', 'globex')"), cols)
    assert mask.tolist() == [False, False]  # the 4-character column must not truncate the literals
    assert to_mask(parse_where("tenant IN ('acme')"), cols).tolist() == [True, False]
