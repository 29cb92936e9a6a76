"""The browser the page tests use is really there and runs JavaScript (no Ray, no server)."""

from __future__ import annotations

import http.server
import threading

from tests.browser import chromium


def test_headless_chromium_runs_a_page_from_localhost(tmp_path):
    (tmp_path / "index.html").write_text(
        "<html><body><p id=out>waiting</p>"
        "<script>document.getElementById('out').textContent = 'ran ' + (6 * 7);</script>"
        "</body></html>", encoding="utf-8")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with chromium() as context:
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            assert page.text_content("#out") == "ran 42"
    finally:
        server.shutdown()
