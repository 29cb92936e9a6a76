"""The web page in a real headless Chromium, against `raysight serve` as a person runs it:
both built-in models, an index of drawn shapes, an API key. One server and one browser for
the module; every step leaves a screenshot in tests/artifacts/ and the browser timings in
tests/artifacts/web-page-timings.json."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysight.shapes import ALL_CAPTIONS, QUESTIONS
from tests.api_server import free_port
from tests.browser import ARTIFACTS, chromium, chromium_path, screenshot

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "page-test-key"
IMAGES = 96       # drawn; the first INDEXED go into the index, the rest stay out of it
INDEXED = 80
START_DEADLINE_S = 240
ACTION_TIMEOUT_MS = 60_000
LAPTOP = {"width": 1100, "height": 760}
PHONE = {"width": 390, "height": 844}

if not (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file():
    pytest.skip("the built-in models are not built", allow_module_level=True)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> dict[str, dict]:
    """Drawn images and three broken files: path -> its labels.csv row."""
    from raysight.shapes import write_shapes_folder

    folder = write_shapes_folder(tmp_path_factory.mktemp("page") / "images", IMAGES, seed=808,
                                 corrupt=3)
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        return {str(folder / row["path"]): row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def indexed(drawn) -> list[str]:
    return [path for path in drawn if Path(path).name.startswith("img_")][:INDEXED]


@pytest.fixture(scope="module")
def index_folder(indexed, tmp_path_factory) -> Path:
    """The index /search serves: shapes-clip vectors of the first INDEXED images."""
    import numpy as np

    from raysight.engines import build_engine
    from raysight.engines.embed import EmbedRequest
    from raysight.index import VectorIndex
    from raysight.spec import ModelSpec

    engine = build_engine(ModelSpec(model="builtin:shapes-clip"))
    results = engine.run([EmbedRequest(image=Path(path).read_bytes()) for path in indexed])
    vectors = np.stack([result.vector for result in results])
    folder = tmp_path_factory.mktemp("page-index") / "shapes"
    return VectorIndex.build(vectors, indexed, model="builtin:shapes-clip").save(folder)


@pytest.fixture(scope="module")
def server(index_folder, tmp_path_factory):
    """`raysight serve ...` in its own session (its own private Ray); yields (URL, banner)."""
    chromium_path()  # no browser here: skip before spending a minute on the server
    port = free_port()
    log = tmp_path_factory.mktemp("page-serve") / "serve.log"
    command = [str(Path(sys.executable).with_name("raysight")), "serve",
               "--model", "builtin:shapes-vlm", "--model", "builtin:shapes-clip",
               "--index", str(index_folder), "--api-key", KEY, "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        banner = wait_for_banner(process, log)
        yield f"http://127.0.0.1:{port}", banner
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # Ctrl-C, as a person stops it
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def wait_for_banner(process: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = re.search(r"^raysight: serving .*$", text, flags=re.M)
        if found:
            return found.group(0)
        if process.poll() is not None:
            pytest.fail(f"raysight serve exited with {process.returncode}:\n{text[-3000:]}")
        time.sleep(0.5)  # the banner is the only sign it is up: poll the log
    pytest.fail(f"raysight serve printed no banner in {START_DEADLINE_S}s:\n"
                f"{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def browser_context():
    with chromium(viewport=LAPTOP) as context:
        yield context


@pytest.fixture(scope="module")
def timings():
    """Seconds each browser action took, written out when the module ends."""
    measured: dict[str, float] = {}
    yield measured
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "web-page-timings.json").write_text(json.dumps(measured, indent=2) + "\n")
    print("\nweb page timings (s):", json.dumps(measured))


@pytest.fixture(scope="module")
def page(server, browser_context):
    """One tab with the key typed in, shared by the panel tests; records every request and
    every uncaught script error."""
    url, _ = server
    tab = browser_context.new_page()
    tab.requests, tab.script_errors = [], []
    tab.on("request", lambda request: tab.requests.append(request.url))
    tab.on("pageerror", lambda error: tab.script_errors.append(str(error)))
    tab.goto(url + "/")
    tab.fill("#api-key", KEY)
    tab.click("#key-form button")
    tab.wait_for_selector("#ask-model option[value=shapes-vlm]", state="attached")
    return tab


def act(page, panel: str, button: str, timings: dict, name: str) -> str:
    """Click `button`, wait until `panel` is done or shows an error; record the seconds."""
    started = time.perf_counter()
    page.click(button)
    page.wait_for_selector(f"#panel-{panel}:not([data-state=busy]):not([data-state=idle])",
                           timeout=ACTION_TIMEOUT_MS)
    timings[name] = round(time.perf_counter() - started, 3)
    return page.get_attribute(f"#panel-{panel}", "data-state")


def hand_over(page, how: str, target: str, path: str) -> None:
    """Give the page an image file as a person would without the file dialog: dropped on
    `target`, or pasted into the page (both as real DOM events carrying a File)."""
    import base64

    page.evaluate("""([how, target, name, data]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], name, {type: 'image/png'}));
        const event = how === 'drop'
            ? new DragEvent('drop', {dataTransfer: files, bubbles: true, cancelable: true})
            : new ClipboardEvent('paste', {clipboardData: files, bubbles: true, cancelable: true});
        document.getElementById(target).dispatchEvent(event);
    }""", [how, target, Path(path).name, base64.b64encode(Path(path).read_bytes()).decode()])


def first_of(drawn: dict, indexed: list[str], caption: str | None = None) -> str:
    return next(p for p in indexed if caption is None or drawn[p]["caption"] == caption)


# --- the tests -------------------------------------------------------------------------------


def test_serve_prints_the_page_url(server):
    url, banner = server
    assert f"try it in a browser at {url}/" in banner, banner


def test_without_the_key_the_page_says_401_and_with_it_works(server, browser_context):
    url, _ = server
    tab = browser_context.new_page()
    tab.goto(url + "/")
    notice = tab.wait_for_selector("#notice:not([hidden])")
    assert "missing or wrong API key" in notice.text_content()
    assert "type the key in the API key box" in notice.text_content()
    screenshot(tab, "page-01-no-key-401")
    tab.fill("#api-key", "wrong-key")
    tab.click("#key-form button")
    tab.wait_for_selector("#notice:has-text('was refused')")
    tab.fill("#api-key", KEY)
    tab.click("#key-form button")
    tab.wait_for_selector("#notice", state="hidden")
    assert tab.eval_on_selector_all("#ask-model option", "os => os.map(o => o.value)") == [
        "shapes-vlm"]
    assert tab.evaluate("sessionStorage.getItem('raysight-api-key')") == KEY
    tab.reload()  # the key stays for the tab's session
    tab.wait_for_selector("#classify-model option[value=shapes-clip]", state="attached")
    assert tab.input_value("#api-key") == KEY
    screenshot(tab, "page-02-with-key")
    tab.close()


def test_ask_streams_answers_and_keeps_the_conversation(page, drawn, indexed, timings):
    path = first_of(drawn, indexed)
    label = drawn[path]
    page.goto(page.url.split("#")[0] + "#ask")
    page.set_input_files("#ask-file", path)
    page.wait_for_selector("#ask-picker img.preview:not([hidden])")
    # Every text the answer bubble was given while it streamed: each update puts in a new
    # text node, so the records keep every step even when several arrive in one task.
    page.evaluate("""() => {
        window.seen = [];
        new MutationObserver((records) => {
            for (const record of records) {
                if (!record.target.classList || !record.target.classList.contains('assistant')) continue;
                for (const node of record.addedNodes) window.seen.push(node.textContent);
            }
        }).observe(document.getElementById('ask-log'), {subtree: true, childList: true});
    }""")
    page.fill("#ask-prompt", "")  # no question: the model captions the image
    assert act(page, "ask", "#ask-send", timings, "ask_caption") == "done"
    caption = page.text_content("#ask-log .assistant")
    assert caption.strip() == label["caption"], caption
    partial = {text.strip() for text in page.evaluate("window.seen")} - {"", caption.strip()}
    assert partial, "the caption arrived in one piece, not streamed"
    assert all(caption.strip().startswith(text) for text in partial), partial
    meta = page.text_content("#ask-meta")
    assert "shapes-vlm" in meta and "complete in" in meta and "batch size 1" in meta, meta

    for question, expected, name in ((QUESTIONS["color"], label["color"], "ask_colour"),
                                     (QUESTIONS["shape"], label["shape"], "ask_shape")):
        page.fill("#ask-prompt", question)  # no new image: the follow-up keeps it
        assert act(page, "ask", "#ask-send", timings, name) == "done"
        assert page.text_content("#ask-log .assistant:last-child").strip() == expected
    turns = page.eval_on_selector_all("#ask-log .turn", "ts => ts.map(t => t.textContent)")
    assert len(turns) == 6 and turns[2] == QUESTIONS["color"], turns
    screenshot(page, "ask-1-conversation")


def test_a_corrupt_file_shows_the_servers_message(page, drawn, timings):
    broken = next(p for p in drawn if Path(p).name == "corrupt_00000.png")  # truncated PNG
    page.goto(page.url.split("#")[0] + "#ask")
    page.set_input_files("#ask-file", broken)
    page.wait_for_selector("#ask-picker .hint:has-text('corrupt_00000.png')")
    page.fill("#ask-prompt", QUESTIONS["color"])
    assert act(page, "ask", "#ask-send", timings, "ask_corrupt") == "error"
    message = page.text_content("#ask-error")
    assert "cannot be decoded" in message and "truncated" in message, message
    assert page.eval_on_selector_all("#ask-log .turn", "ts => ts.length") == 0
    screenshot(page, "ask-3-corrupt-file")

    text_file = next(p for p in drawn if Path(p).name == "corrupt_00001.png")  # not an image
    page.goto(page.url.split("#")[0] + "#classify")
    page.set_input_files("#classify-file", text_file)
    # The picker reads the file asynchronously: sent before it has, the page would say
    # "pick an image first" (also an error state) instead of the server's message.
    page.wait_for_selector("#classify-picker .hint:has-text('corrupt_00001.png')")
    assert act(page, "classify", "#classify-send", timings, "classify_not_an_image") == "error"
    assert "not an image" in page.text_content("#classify-error")
    screenshot(page, "classify-0-not-an-image")


def test_search_by_text_shows_red_circles_with_thumbnails(page, drawn, indexed, timings):
    page.goto(page.url.split("#")[0] + "#search")
    page.fill("#search-text", "a red circle")
    page.fill("#search-k", "5")
    assert act(page, "search", "#search-send", timings, "search_text") == "done"
    hits = page.eval_on_selector_all(
        "#search-results .hit",
        "hs => hs.map(h => [h.dataset.id, Number(h.dataset.score), "
        "h.querySelector('img') ? h.querySelector('img').naturalWidth : 0])")
    in_index = sum(drawn[p]["caption"] == "a red circle" for p in indexed)
    assert len(hits) == 5 and in_index >= 5
    assert [drawn[hit_id]["caption"] for hit_id, _, _ in hits] == ["a red circle"] * 5
    scores = [score for _, score, _ in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(width > 0 for _, _, width in hits)  # every thumbnail arrived and decoded
    meta = page.text_content("#search-meta")
    assert "shapes-clip" in meta and "by text" in meta and "batch size 1" in meta, meta
    assert re.search(r"· \d+ ms on the model$", meta), meta  # from the Server-Timing header
    screenshot(page, "search-1-text")


def test_search_by_a_pasted_image_finds_that_image_first(page, drawn, indexed, timings):
    path = indexed[7]
    page.goto(page.url.split("#")[0] + "#search")
    page.fill("#search-text", "")
    hand_over(page, "paste", "search-text", path)  # pasted anywhere on the Search panel
    page.wait_for_selector(f"#search-picker .hint:has-text('{Path(path).name}')")
    assert act(page, "search", "#search-send", timings, "search_image") == "done"
    first = page.get_attribute("#search-results .hit:first-child", "data-id")
    assert first == path and "by image" in page.text_content("#search-meta")
    screenshot(page, "search-2-image")


def test_classify_a_dropped_image_puts_the_drawn_label_on_top(page, drawn, indexed, timings):
    path = first_of(drawn, indexed, "a blue triangle")
    page.goto(page.url.split("#")[0] + "#classify")
    hand_over(page, "drop", "classify-picker", path)
    page.wait_for_selector(f"#classify-picker .hint:has-text('{Path(path).name}')")
    page.fill("#classify-labels", ", ".join(ALL_CAPTIONS))
    assert act(page, "classify", "#classify-send", timings, "classify") == "done"
    bars = page.eval_on_selector_all(
        "#classify-bars .bar",
        "bs => bs.map(b => [b.dataset.label, Number(b.dataset.score), b.classList.contains('top'),"
        " b.querySelector('.fill').getBoundingClientRect().width])")
    assert len(bars) == len(ALL_CAPTIONS)
    best = max(bars, key=lambda bar: bar[1])
    assert best[0] == "a blue triangle" and best[2], bars
    assert best[3] == max(bar[3] for bar in bars)  # the highest bar is the widest drawn
    meta = page.text_content("#classify-meta")
    assert "shapes-clip" in meta and re.search(r"· \d+ ms on the model$", meta), meta
    screenshot(page, "classify-1-bars")


def test_phone_width_has_no_sideways_scrolling(page):
    page.set_viewport_size(PHONE)
    try:
        for panel in ("ask", "search", "classify"):
            page.goto(page.url.split("#")[0] + "#" + panel)
            page.wait_for_selector(f"#panel-{panel}:not([hidden])")
            screenshot(page, f"phone-{panel}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], (panel, width)
    finally:
        page.set_viewport_size(LAPTOP)


def test_the_page_only_talked_to_its_server_and_threw_nothing(page, server):
    url, _ = server
    assert page.script_errors == []
    assert page.requests and all(
        request.startswith((url + "/", "blob:", "data:")) for request in page.requests
    ), [request for request in page.requests if not request.startswith(url)]


def test_the_image_route_refuses_what_is_not_in_the_index(server, drawn, indexed):
    import requests

    url, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    outside = next(p for p in drawn if Path(p).name.startswith("img_") and p not in indexed)
    folder = Path(indexed[0]).parent
    for asked in (outside,                                   # a real drawn image, not indexed
                  str(folder / ".." / "images" / Path(indexed[0]).name),  # indexed, with ..
                  "/etc/passwd",                            # a real file elsewhere
                  str(folder / "labels.csv")):
        response = requests.get(url + "/search/image", params={"id": asked}, headers=auth,
                                timeout=30)
        assert response.status_code == 404, (asked, response.text)
        assert response.json()["error"]["code"] == "not_found"
    served = requests.get(url + "/search/image", params={"id": indexed[0]}, headers=auth,
                          timeout=30)
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    no_key = requests.get(url + "/search/image", params={"id": indexed[0]}, timeout=30)
    assert no_key.status_code == 401
