"""Malformed values typed into URLs and forms: a 400 page naming the field, never FastAPI's raw 422 JSON, and
nothing deployed."""

from __future__ import annotations

import pytest

from tests.ui.test_ui_actions import head, post


@pytest.mark.parametrize(("url", "field"), [("/data/{version}?page=abc", "page"),
                                            ("/retrieval?q=refunds&top_k=lots", "top_k")])
def test_malformed_query_values_are_a_400_page_naming_the_field(shared_client, url, field):
    r = shared_client.get(url.format(version=shared_client.project["version"]))
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    message = r.text.split('id="error-message">')[1].split("</p>")[0]
    assert message.startswith(f"{field}: ") and "valid integer" in message


def test_a_shared_search_link_without_an_index_searches_the_projects_index(shared_client):
    r = shared_client.get("/retrieval", params={"q": "refunds", "t1": "acme"})
    assert r.status_code == 200 and "Acme refunds are paid" in r.text


@pytest.mark.parametrize(("url", "data", "field"), [
    ("/registry/promote", {"adapter": "ad-run-a", "stage": "prod"}, "stage"),
    ("/registry/promote", {"adapter": "ad-run-a", "mode": "canary", "percent": "150"}, "percent"),
    ("/registry/promote", {"adapter": "ad-run-a", "mode": "canary", "percent": "nan"}, "percent"),
    ("/registry/rollback", {"stage": "prod"}, "stage"),
])
def test_bad_deploy_fields_are_named_and_nothing_is_deployed(shared_client, url, data, field):
    r = post(shared_client, url, **data)
    assert r.status_code == 400
    assert r.text.split('id="error-message">')[1].startswith(f"{field}: ")
    assert head(shared_client) is None and head(shared_client, "staging") is None
