"""The HTTP API describes itself: /openapi.json against the app it describes. A schema-driven
API tester (schemathesis, all checks) finds nothing; the README's requests validate against the
published schema; errors, wrong methods and unknown routes answer in the one error shape; /docs
renders in a headless Chromium from assets the app serves itself.

The app runs for real over HTTP on 127.0.0.1 with the built-in models in-process (no Ray):
tests/api_server.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.api_server import API_KEY, build_index, served_app
from tests.unit.test_readme import SERVER, code_blocks, section

ROOT = Path(__file__).resolve().parents[2]
HAVE_BUILTIN = (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file()
ROUTES = {"/v1/chat/completions": "post", "/v1/embeddings": "post", "/v1/models": "get",
          "/predict": "post", "/classify": "post", "/search": "post", "/healthz": "get",
          "/readyz": "get"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Bounds of the API tester's run (the whole test stays well under 90 s on 2 busy cores).
MAX_EXAMPLES, MAX_TIME_S = 10, 40


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> str:
    if not HAVE_BUILTIN:
        pytest.skip("the built-in models are not built")
    index = build_index(tmp_path_factory.mktemp("api") / "shapes-index")
    with served_app(index, api_key=API_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def schema(api) -> dict:
    response = httpx.get(f"{api}/openapi.json")  # open: no key
    assert response.status_code == 200
    return response.json()


def body_validator(schema: dict, path: str):
    """A JSON-schema validator for the request body of POST `path` in the published schema."""
    import jsonschema

    ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**ref, "components": schema["components"]})


# --- the API tester ----------------------------------------------------------------------------


def test_the_api_tester_finds_no_failures(api):
    """schemathesis, every check, every operation, bounded; its summary is the evidence."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
           "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file",
               str(ROOT / "tests/schemathesis.toml"), "run", f"{api}/openapi.json",
               "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
               "--max-time", str(MAX_TIME_S), "--seed", "7",
               "--header", f"Authorization: Bearer {API_KEY}"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=MAX_TIME_S + 60)
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    summary = output[output.find("SUMMARY"):] if "SUMMARY" in output else output[-4000:]
    (ROOT / "tests/artifacts").mkdir(exist_ok=True)
    (ROOT / "tests/artifacts/schemathesis-summary.txt").write_text(
        f"{' '.join(command[2:])}\ntook {took:.1f} s\n\n{summary}")
    # On failure: each failure's heading, check and answer, then the tester's summary.
    reported = re.compile(r"^(_{5,} |- ST|\[\d{3}\] |\s+(Invalid component|curl|`))")
    failures = "\n".join(line[:300] for line in output.splitlines() if reported.match(line))
    assert done.returncode == 0, f"schemathesis found failures:\n{failures}\n\n{summary}"
    tested = re.search(r"Tested: (\d+)", summary)
    paths = httpx.get(f"{api}/openapi.json").json()["paths"]
    operations = sum(len(methods) for methods in paths.values())
    assert tested and int(tested.group(1)) == operations >= len(ROUTES), summary
    generated = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert generated and generated.group(1) == generated.group(2), summary
    assert int(generated.group(1)) >= 100, summary
    print(f"\nschemathesis took {took:.1f} s\n{summary}")


# --- what the schema says ----------------------------------------------------------------------


def test_every_route_declares_its_body_answers_and_errors(schema):
    paths = schema["paths"]
    assert {path: next(iter(paths[path])) for path in ROUTES} == ROUTES
    components = schema["components"]["schemas"]
    for path, method in ROUTES.items():
        operation = paths[path][method]
        answers = operation["responses"]
        assert "200" in answers, path
        if method == "post":
            assert "requestBody" in operation and operation["requestBody"]["required"]
            for status in ("400", "401", "403", "404", "413", "422", "500", "503"):
                error = answers[status]["content"]["application/json"]["schema"]["$ref"]
                assert error.endswith("/FlatError" if path == "/predict" else "/Error"), path
            assert answers["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
        open_route = path in ("/healthz", "/readyz")
        assert ("security" in operation) is not open_route, path
    chat = components["ChatCompletionRequest"]
    assert chat["required"] == ["messages"]
    assert chat["properties"]["max_tokens"]["anyOf"][0] == {
        "type": "integer", "minimum": 1, "maximum": 16}  # the served model's limit
    assert chat["properties"]["model"]["anyOf"][0]["enum"] == ["shapes-vlm"]
    assert chat["properties"]["n"]["anyOf"][0] == {"const": 1}
    assert components["SearchRequest"]["properties"]["k"]["default"] == 5
    assert components["SearchRequest"]["properties"]["index"]["anyOf"][0]["enum"] == [
        "shapes-index"]
    assert components["PredictRequest"]["required"] == ["prompt", "image"]
    embed_input = components["EmbeddingsRequest"]["properties"]["input"]
    assert embed_input["anyOf"][1]["maxItems"] == 64  # max_inputs_per_request
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert "ChatCompletion" in components and "Error" in components
    assert "HTTPValidationError" not in components  # bad bodies are 400s, not FastAPI's 422


def test_the_schema_names_every_field_the_handlers_read(schema):
    """Routes parse bodies themselves (cheaper than FastAPI's declared bodies, see
    bench/body_parse.py), so each route's schema must be its parser's model, field for field."""
    from serve_app import openai_api

    for path, method in ROUTES.items():
        if method != "post":
            continue
        ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        name = ref["schema"]["$ref"].rsplit("/", 1)[1]
        model = getattr(openai_api, name)
        published = schema["components"]["schemas"][name]
        assert set(published["properties"]) == set(model.model_fields), path
        required = {field for field, info in model.model_fields.items() if info.is_required()}
        assert required <= set(published.get("required", [])), path
        for field, info in model.model_fields.items():
            if not info.is_required():
                assert published["properties"][field].get("default") == info.default, field


def test_the_schema_accepts_what_the_handlers_accept(schema):
    """Bodies the handlers take are schema-valid; bodies the schema refuses get a 400."""
    chat = body_validator(schema, "/v1/chat/completions")
    valid = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "n": 1,
             "stop": [], "response_format": {"type": "text"}, "user": "ignored extra"}
    assert not list(chat.iter_errors(valid))
    for refused in ({"messages": []}, {"messages": [{"role": "user", "content": "hi"}], "n": 2},
                    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "4"}):
        assert list(chat.iter_errors(refused)), refused
    search = body_validator(schema, "/search")
    assert not list(search.iter_errors({"text": "a red circle", "k": 3}))
    assert list(search.iter_errors({"text": "a", "image": "b"}))
    assert list(search.iter_errors({}))


def test_bad_bodies_are_400s_with_readable_messages(api):
    def error(path: str, **request) -> tuple[int, object]:
        headers = request.pop("headers", AUTH)
        response = httpx.post(f"{api}{path}", headers=headers, **request)
        return response.status_code, response.json()["error"]

    status, body = error("/v1/embeddings", content=b"")
    assert status == 400 and body["message"] == "the request body is empty; send a JSON object"
    status, body = error("/v1/embeddings", content=b"{oops",
                         headers={**AUTH, "Content-Type": "application/json"})
    assert status == 400 and body["message"].startswith("the request body is not valid JSON")
    status, body = error("/v1/embeddings", json=[1, 2])
    assert body["message"] == "the request body must be a JSON object"
    status, body = error("/v1/embeddings", json={"input": "a red circle", "dimensions": 8})
    assert status == 400 and "dimensions is not supported" in body["message"]
    status, body = error("/v1/chat/completions", json={"messages": [], "max_tokens": "5"})
    assert status == 400 and body == {
        "message": "invalid request: messages: List should have at least 1 item after "
                   "validation, not 0; max_tokens: Input should be a valid integer",
        "type": "invalid_request_error", "code": "invalid_request"}
    status, body = error("/predict", json={"prompt": 3})
    assert status == 400 and body == "invalid request: prompt: Input should be a valid string"
    status, body = error("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "stop": ["."]})
    assert status == 400 and body["message"] == "unsupported option(s): stop sequences"


def test_wrong_method_is_405_with_allow_and_unknown_route_404(api):
    response = httpx.request("TRACE", f"{api}/v1/models", headers=AUTH)
    assert response.status_code == 405 and response.headers["Allow"] == "GET"
    assert response.json()["error"]["message"] == "TRACE /v1/models: Method Not Allowed"
    response = httpx.get(f"{api}/v1/embeddings", headers=AUTH)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    bad_query = httpx.get(f"{api}/search/image", params={"id": "x", "size": 5}, headers=AUTH)
    assert bad_query.status_code == 400 and bad_query.json()["error"]["message"] == (
        "invalid request: query.size: Input should be greater than or equal to 16")
    missing = httpx.get(f"{api}/v2/nothing", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


# --- the README's requests against the schema ------------------------------------------------


def test_every_readme_request_validates_against_the_schema(api, schema, tmp_path, monkeypatch):
    """The Online section's curl bodies and OpenAI-client requests, checked with the schema:
    the curl commands run with a `curl` that records its arguments; the client examples run
    against this app and their requests are recorded on the way."""
    online = section("Online")
    [draw] = [block for block in code_blocks("python", online) if "image.save(" in block]
    monkeypatch.chdir(tmp_path)
    drawing = "\n".join(line for line in draw.splitlines() if "write_shapes_folder(" not in line)
    exec(compile(drawing, "README drawing", "exec"), {})
    script = "\n".join(block for block in code_blocks("bash", online) if SERVER in block)
    record = 'curl() { printf "%s\\0" "$@" >> calls; printf "\\1" >> calls; }\n'
    subprocess.run(["bash", "-c", "set -eu\n" + record + script], check=True, timeout=60)
    sent = []
    for call in Path("calls").read_text().split("\1"):
        args = call.split("\0")
        if len(args) < 2:
            continue
        url = next(arg for arg in args if SERVER in arg)
        body = args[args.index("-d") + 1] if "-d" in args else None
        sent.append((urlsplit("http://" + url).path, body))
    posted = [(path, json.loads(body)) for path, body in sent if body is not None]
    assert {path for path, _ in sent} >= set(ROUTES)
    assert len(posted) >= 9

    import openai

    class RecordingClient(openai.OpenAI):
        """The README's client, pointed at this app with its key; requests are kept."""

        def __init__(self, **options):
            hooks = {"request": [lambda request: posted.append(
                (request.url.path, json.loads(request.read())))
                if request.method == "POST" else None]}
            super().__init__(base_url=f"{api}/v1", api_key=API_KEY,
                             http_client=httpx.Client(event_hooks=hooks))

    monkeypatch.setattr(openai, "OpenAI", RecordingClient)
    before = len(posted)
    namespace: dict = {}
    client_blocks = [b for b in code_blocks("python", online) if "image.save" not in b]
    for number, block in enumerate(client_blocks):
        exec(compile(block, f"README online python block {number}", "exec"), namespace)
    assert len(posted) - before == 4  # two chats, two embeddings
    for path, body in posted:
        problems = [error.message for error in body_validator(schema, path).iter_errors(body)]
        assert not problems, f"README request to {path} breaks the schema: {problems}"


# --- docs pages ------------------------------------------------------------------------------


def test_docs_pages_and_their_assets_are_served_by_the_app(api):
    for page, asset in (("/docs", "/docs/assets/swagger/swagger-ui-bundle.js"),
                        ("/redoc", "/docs/assets/redoc/redoc.standalone.js")):
        html = httpx.get(f"{api}{page}")  # open without the key, as the README says
        assert html.status_code == 200 and asset in html.text
        assert "https://" not in html.text and "http://" not in html.text
        script = httpx.get(f"{api}{asset}")
        assert script.status_code == 200 and len(script.content) > 500_000
    assert httpx.get(f"{api}/v1/models").status_code == 401  # the API itself still needs it


def test_docs_can_be_turned_off():
    from fastapi.testclient import TestClient

    from raysight.spec import ModelSpec
    from serve_app.config import ServeConfig
    from serve_app.gateway import Gateway
    from serve_app.routes import build_http_api

    config = ServeConfig.for_specs([ModelSpec(model="some/model")], docs=False)
    client = TestClient(build_http_api(Gateway(config, {"model": object()})))
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger/swagger-ui.css"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_docs_render_in_chromium_with_no_request_leaving_localhost(api):
    from tests.browser import chromium, screenshot

    requests = set()
    with chromium() as context:
        page = context.new_page()
        page.on("request", lambda request: requests.add(request.url))
        page.goto(f"{api}/docs", wait_until="networkidle")
        page.wait_for_selector(".opblock", timeout=20_000)
        rendered = page.locator(".opblock-summary-path").all_inner_texts()
        shot = screenshot(page, "openapi-docs")
        page.goto(f"{api}/redoc", wait_until="networkidle")
        page.get_by_text("Chat Completions").first.wait_for(timeout=20_000)
        redoc_text = page.inner_text("body")
        screenshot(page, "openapi-redoc")
    # data: and blob: URLs (ReDoc's icons and worker) are made in the page; nothing else
    # may go anywhere but the app.
    network = {urlsplit(url) for url in requests if not url.startswith(("data:", "blob:"))}
    assert {(url.scheme, url.hostname) for url in network} == {("http", "127.0.0.1")}, requests
    assert any(url.path == "/docs/assets/swagger/swagger-ui-bundle.js" for url in network)
    assert {text.strip().replace("\u200b", "") for text in rendered} >= set(ROUTES)
    for summary in ("Chat Completions", "Embeddings", "Models", "Predict", "Classify", "Search",
                    "Healthz", "Readyz"):
        assert summary in redoc_text, summary
    assert shot.stat().st_size > 10_000


def test_a_chunked_body_over_the_cap_is_413_not_a_parse_error():
    """FastAPI reads a declared body itself and turns a failed read into a 400; the cap's own
    refusal (no Content-Length to check first) must still be the 413 that names the limit."""
    from fastapi.testclient import TestClient

    from raysight.spec import ModelSpec
    from serve_app.config import ServeConfig
    from serve_app.gateway import Gateway
    from serve_app.routes import build_http_api

    config = ServeConfig.for_specs([ModelSpec(model="some/model")], max_body_bytes=1000)
    client = TestClient(build_http_api(Gateway(config, {"model": object()})))
    chunks = iter([b'{"input": "' + b"x" * 600, b"x" * 600 + b'"}'])
    response = client.post("/v1/embeddings", content=chunks,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["message"] == (
        "the request body is larger than that; the limit is 1,000 bytes (max_body_bytes)")
