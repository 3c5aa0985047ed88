"""The OpenAPI document (/openapi.json) and the docs page (/docs): a valid OpenAPI 3.1
document that covers every route of the app, a feature-schema component per model version
(linked from GET /models/<name>, shown only to a key that may read models, and current on a
live server when a model is trained), a page whose assets come from the service, and a
bounded schemathesis run against a live gunicorn that finds no 5xx and no answer the
document does not describe."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import jsonschema
import pandas as pd
import pytest
import requests
from openapi_spec_validator import validate

from shared.openapi.document import component_name
from shared.security.keyfile import create_key
from shared.security.roles import DOCS_ASSETS, PUBLIC_PATHS
from tests.artifacts import copy_demo
from tests.inprocess import inprocess_app
from tests.servers import ROOT, ApiServer, tabserve_env, wait_until

QUEUE = "openapitest"  # no worker consumes it: jobs submitted here stay queued
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance"


@pytest.fixture(scope="module")
def app(base_settings):
    return inprocess_app(base_settings.with_overrides(queue_name=QUEUE))


@pytest.fixture
def client(app, redis_client):
    return app.test_client()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("openapi-keys") / "keys.json"
    return path, {"reader": create_key(path, "reader", "read")}


@pytest.fixture(scope="module")
def keyed_client(base_settings, tokens):
    path, _ = tokens
    app = inprocess_app(base_settings.with_overrides(queue_name=QUEUE, api_keys_file=path,
                                            rate_limit_requests=0))
    return app.test_client()


@pytest.fixture(scope="module")
def live(base_settings, artifacts_dir, tmp_path_factory):
    """A gunicorn of its own, over a copy of the artifacts (a test trains a model into it)."""
    artifacts = copy_demo(artifacts_dir, tmp_path_factory.mktemp("openapi") / "artifacts")
    settings = base_settings.with_overrides(
        artifacts_dir=artifacts, queue_name=QUEUE,
        # Its own Redis database: other tests' job records are not its to list or download.
        redis_url=base_settings.redis_url.rsplit("/", 1)[0] + "/11",
        data_dir=str(tmp_path_factory.mktemp("openapi-data")),
        # Schemathesis is a client looping on refused submissions, which the API slows down
        # after a few (shared/security/refusals.py; its own tests are in test_api_isolation):
        # off here, so the fuzzer's hundreds of 4xx fit its time.
        job_refusals_per_second=0)
    env = tabserve_env(settings.as_env())
    server = ApiServer(env, tmp_path_factory.mktemp("openapi-logs"))
    server.env = env  # type: ignore[attr-defined]
    yield server
    server.stop()


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^>:]+:)?([^>]+)>", r"{\1}", rule)


def _resolve(document: dict, pointer: str) -> dict:
    node = document
    for part in pointer.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_valid_openapi_3_1(client, keyed_client):
    with_models = client.get("/openapi.json")
    assert with_models.status_code == 200 and with_models.mimetype == "application/json"
    document = with_models.get_json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    validate(keyed_client.get("/openapi.json").get_json())  # the generic one, without a key


def test_every_route_of_the_app_is_documented_and_nothing_else(app, client):
    paths = client.get("/openapi.json").get_json()["paths"]
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        routes |= {(m.lower(), _openapi_path(rule.rule)) for m in rule.methods & METHODS}
    documented = {(m, p) for p, item in paths.items() for m in item}
    assert routes - documented == set(), "routes without documentation"
    assert documented - routes == set(), "documented operations the app does not serve"
    assert len(routes) >= 30


def test_public_operations_are_the_public_paths(client):
    document = client.get("/openapi.json").get_json()
    assert document["security"] == [{"apiKey": []}]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            public = operation.get("security") == []
            assert public is (path in PUBLIC_PATHS), (method, path)
            statuses = set(operation["responses"])
            assert "431" in statuses, (method, path)
            assert public or {"401", "403", "429"} <= statuses, (method, path)


def test_errors_are_documented_in_the_shape_each_protocol_answers(client):
    paths = client.get("/openapi.json").get_json()["paths"]

    def error_ref(path: str, method: str, status: str) -> str:
        return paths[path][method]["responses"][status]["content"]["application/json"][
            "schema"]["$ref"].rsplit("/", 1)[1]

    assert error_ref("/predict", "post", "422") == "Error"
    assert error_ref("/jobs/{job_id}/result", "get", "409") == "Error"
    assert error_ref("/invocations", "post", "415") == "MlflowError"
    assert error_ref("/v2/models/{name}/infer", "post", "400") == "V2Error"
    assert error_ref("/v1/models/{name}:predict", "post", "400") == "V1Error"
    r = client.post("/predict", json={"features": {"nope": 1}})
    assert r.status_code == 422 and set(r.get_json()["error"]) == {"code", "message", "details"}


def test_each_model_version_has_a_feature_schema_linked_from_get_model(client, demo_rows):
    r = client.get("/models/breast-cancer")
    assert r.status_code == 200
    body = r.get_json()
    link = body["schema"]
    assert link == "/openapi.json#/components/schemas/" + component_name("breast-cancer", 1)
    assert [v["schema"] for v in body["versions"]] == [link]
    listed = client.get("/models").get_json()["models"]  # other tests may have added models
    assert [m["latest"]["schema"] for m in listed if m["name"] == "breast-cancer"] == [link]
    document_url, pointer = link.split("#")
    document = client.get(document_url).get_json()
    component = _resolve(document, pointer)
    names = [f["name"] for f in body["versions"][0]["features"]]
    assert list(component["properties"]) == names and component["required"] == names
    jsonschema.validate(demo_rows[0], component)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**demo_rows[0], "mean radius": "big"}, component)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**demo_rows[0], "unknown": 1.0}, component)


def test_the_documented_example_is_a_request_that_succeeds(client):
    document = client.get("/openapi.json").get_json()
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"][
        "application/json"]["example"]
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    jsonschema.validate(r.get_json(), {**document["components"]["schemas"]["PredictResponse"],
                                       "components": document["components"]},
                        cls=jsonschema.Draft202012Validator)


def test_feature_schemas_only_for_a_key_that_may_read_models(keyed_client, tokens):
    _, keys = tokens

    def components(headers: dict[str, str]) -> list[str]:
        r = keyed_client.get("/openapi.json", headers=headers)
        assert r.status_code == 200
        return [c for c in r.get_json()["components"]["schemas"] if c.startswith("Features.")]

    assert components({}) == []
    assert components({"Authorization": "Bearer tsk_wrong"}) == []
    readable = components({"Authorization": f"Bearer {keys['reader']}"})
    assert component_name("breast-cancer", 1) in readable  # (and any other test's models)
    assert keyed_client.get("/models").status_code == 401  # the manifests stay closed
    assert keyed_client.get("/docs").status_code == 200
    for asset in DOCS_ASSETS:
        assert keyed_client.get(asset).status_code == 200, asset


def test_docs_page_loads_its_assets_from_the_service(live):
    page = requests.get(live.url + "/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "connect-src 'self'" in policy
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(urls) == 3
    types = {".css": "text/css", ".js": "text/javascript"}
    for url in urls:
        assert not urlsplit(url).scheme and not url.startswith("//"), url  # no CDN
        asset = requests.get(urljoin(page.url, url), timeout=10)
        assert asset.status_code == 200, url
        assert asset.headers["Content-Type"].startswith(types[Path(url).suffix]), url
        assert urlsplit(asset.url).path in DOCS_ASSETS
    init = requests.get(urljoin(page.url, urls[-1]), timeout=10).text
    assert 'url: "openapi.json"' in init and "validatorUrl: null" in init
    assert requests.get(urljoin(page.url, "openapi.json"), timeout=10).json()["openapi"]
    licence = ROOT / "api/static/vendor/swagger-ui/LICENSE"
    assert "Apache License" in licence.read_text()


def test_the_static_assets_ship_in_the_package_and_the_api_image():
    from tests.test_deploy_files import (
        DOCKERFILES,
        context_sources,
        dockerignore_excludes,
        parse_dockerfile,
    )

    image_sources = context_sources(parse_dockerfile(DOCKERFILES["api"]))
    for asset in DOCS_ASSETS:
        path = "api" + asset
        assert not dockerignore_excludes(path), path
        assert any(path.startswith(s.rstrip("/") + "/") for s in image_sources), path
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = config["options.package_data"]["api"].split()
    shipped = {p for pattern in patterns for p in (ROOT / "api").glob(pattern)}
    for asset in DOCS_ASSETS:
        assert ROOT / "api" / asset.lstrip("/") in shipped, asset
    assert ROOT / "api/static/vendor/swagger-ui/LICENSE" in shipped


def test_a_model_trained_on_a_live_server_appears_in_the_document(live, demo_data, tmp_path):
    name = "second-model"
    before = requests.get(live.url + "/openapi.json", timeout=10).json()
    assert component_name(name, 1) not in before["components"]["schemas"]
    names, X = demo_data
    frame = pd.DataFrame(X[:, :3], columns=names[:3])
    frame["big"] = frame[names[0]] > frame[names[0]].median()
    frame.to_csv(tmp_path / "train.csv", index=False)
    subprocess.run([sys.executable, "-m", "cli", "train", "--data", str(tmp_path / "train.csv"),
                    "--target", "big", "--name", name], env=live.env, cwd=ROOT, check=True,
                   capture_output=True, timeout=300)

    def documented() -> bool:
        schemas = requests.get(live.url + "/openapi.json", timeout=10).json()[
            "components"]["schemas"]
        return component_name(name, 1) in schemas

    wait_until(documented, 30, "the new model's component")
    link = requests.get(f"{live.url}/models/{name}", timeout=10).json()["schema"]
    assert link.endswith(component_name(name, 1))
    document = requests.get(live.url + "/openapi.json", timeout=10).json()
    assert list(_resolve(document, link.split("#")[1])["properties"]) == names[:3]


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(live,
                                                                               tmp_path):
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", live.url + "/openapi.json",
         "--checks", CHECKS, "--max-examples", "5", "--seed", "20261202", "--workers", "1",
         "--no-shrink", "--suppress-health-check", "all", "--request-timeout", "10",
         # Every operation: without a filter schemathesis leaves out the one serving the
         # document itself.
         "--include-path-regex", "^/",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, (run.stdout[-8000:] + run.stderr[-2000:]
                                 + "\nAPI log:\n" + live.log()[-6000:])
    document = requests.get(live.url + "/openapi.json", timeout=10).json()
    operations = sum(len(item) for item in document["paths"].values())
    tested = re.search(r"Tested:\s+(\d+)", run.stdout)
    assert tested and int(tested.group(1)) == operations, run.stdout[-3000:]
    assert elapsed < 60, f"the bounded run took {elapsed:.0f} s"


def test_v2_infer_with_a_datatype_that_is_not_a_string_is_a_400(client):
    # Found by schemathesis: {"datatype": {}} raised TypeError (unhashable) and answered 500.
    body = {"inputs": [{"name": "x", "datatype": {}, "shape": [0], "data": None}]}
    r = client.post("/v2/models/breast-cancer/infer", json=body)
    assert r.status_code == 400
    assert "datatype" in r.get_json()["error"]
