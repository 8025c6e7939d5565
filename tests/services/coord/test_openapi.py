"""The admin API's OpenAPI document (issue #13, item 2), in process: it is valid OpenAPI 3.1, it
names exactly the routes the app serves, it is served as YAML and JSON, and the docs page loads
nothing from elsewhere. The document and the page answer without an API key; nothing else does.
(The live check of every answer against the document is tests/cli/test_schemathesis.py.)"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import jsonschema_rs
import pytest
import yaml
from schemathesis.specs.openapi.definitions import OPENAPI_31

from trioscale.config import config_from_dict
from trioscale.options import admin_options
from trioscale.services.coord.admin import create_admin_app
from trioscale.services.coord.admin.app import route_table
from trioscale.services.coord.admin.openapi import document
from trioscale.shared.store import open_store_url
from trioscale.shared.store.base import Store

OPTIONS = admin_options(config_from_dict({}))
VERBS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(verb.upper(), path) for path, item in doc["paths"].items() for verb in item if verb in VERBS}


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = json.loads(json.dumps(document()))  # as a client reads it: plain JSON values
    errors = [f"{e.instance_path}: {e.message}" for e in jsonschema_rs.validator_for(OPENAPI_31).iter_errors(doc)]
    assert errors == []
    assert doc["openapi"].startswith("3.1.")


def test_the_meta_schema_check_finds_a_broken_document() -> None:
    broken = json.loads(json.dumps(document()))
    broken["paths"]["/api/v1/health"]["get"]["responses"] = "ok"
    assert not jsonschema_rs.validator_for(OPENAPI_31).is_valid(broken)


def test_the_document_names_exactly_the_routes_served() -> None:
    app = create_admin_app(OPTIONS, None, coordinator=None)  # type: ignore[arg-type]
    served = set(route_table(app))
    described = operations(document())
    assert described - served == set(), "described but not served"
    assert served - described == set(), "served but not described"


def test_every_reference_resolves_and_every_operation_is_complete() -> None:
    doc = document()
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node: Any = doc
        for part in ref.split("/"):
            node = node[part]
    ids = []
    for path, item in doc["paths"].items():
        for verb, op in item.items():
            ids.append(op["operationId"])
            assert "200" in op["responses"], (verb, path)
            named = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert named == set(re.findall(r"{(\w+)}", path)), (verb, path)
    assert len(ids) == len(set(ids))


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with open_store_url("sqlite://:memory:") as s:
        yield s


async def test_served_as_yaml_and_json_without_a_key(store: Store) -> None:
    client = create_admin_app(OPTIONS, store, coordinator=None).test_client()  # the TCP app: keys required
    resp = await client.get("/api/v1/openapi.yaml")
    assert resp.status_code == 200 and resp.mimetype == "application/yaml"
    assert yaml.safe_load(await resp.get_data(as_text=True)) == json.loads(json.dumps(document()))
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert await resp.get_json() == json.loads(json.dumps(document()))
    resp = await client.get("/api/v1/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert "openapi.json" in await resp.get_data(as_text=True)
    # only those: the rest of the API, and another verb on these paths, still need the key
    for verb, path in [("GET", "/api/v1/health"), ("GET", "/api/v1/user"), ("POST", "/api/v1/openapi.yaml"),
                       ("GET", "/api/v1/openapi.yml"), ("GET", "/api/v1/docs/")]:
        resp = await client.open(path, method=verb)
        assert resp.status_code == 401, (verb, path)


def test_the_docs_page_loads_nothing_from_elsewhere() -> None:
    from trioscale.services.coord.admin.docspage import PAGE

    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", PAGE)
    assert not re.search(r"fetch\(\s*[\"'`](https?:)?//", PAGE)
    assert "default-src 'self'" in PAGE  # and the browser refuses any that slips in


def test_every_headscale_parameter_and_field_is_in_the_document() -> None:
    """Every query parameter and body field Headscale's v0.29.2 document gives a route is in ours for
    the same route (so a client generated from either sends what the other reads); Schemathesis
    then holds the server to our document."""
    from pathlib import Path

    hs = json.loads((Path(__file__).parents[2] / "cli" / "data" / "headscale-v0.29.2.swagger.json").read_text())
    ours = document()
    missing = []
    for path, item in hs["paths"].items():
        for verb, op in item.items():
            mine = ours["paths"][path][verb]
            my_query = {p["name"] for p in mine.get("parameters", []) if p["in"] == "query"}
            body = (mine.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema", {})
            my_fields = set(body.get("properties", {}))
            for p in op.get("parameters", []):
                if p["in"] == "query" and p["name"] not in my_query:
                    missing.append(f"{verb.upper()} {path}: query {p['name']}")
                if p["in"] == "body":
                    schema = p["schema"]
                    if "$ref" in schema:
                        schema = hs["definitions"][schema["$ref"].rsplit("/", 1)[1]]
                    missing += [f"{verb.upper()} {path}: body {f}" for f in schema.get("properties", {})
                                if f not in my_fields]
    assert missing == []
