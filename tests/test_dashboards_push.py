"""`runstream dashboards push` against a stand-in for Grafana's HTTP API (Grafana cannot run here): proves the
requests it makes (folder created once, every dashboard created or updated by uid into it, bearer token sent)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from runstream.dashboards.build import DASHBOARDS
from runstream.dashboards.push import FOLDER_UID, push


class FakeGrafana(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, dict, str]] = []
    folders: set[str] = set()

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.calls.append(("GET", self.path, {}, self.headers.get("Authorization", "")))
        if self.path == f"/api/folders/{FOLDER_UID}" and FOLDER_UID in self.folders:
            self._reply(200, {"uid": FOLDER_UID})
        else:
            self._reply(404, {"message": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("POST", self.path, body, self.headers.get("Authorization", "")))
        if self.path == "/api/folders":
            self.folders.add(body["uid"])
            self._reply(200, {"uid": body["uid"], "title": body["title"]})
        elif self.path == "/api/dashboards/db":
            self._reply(200, {"status": "success", "uid": body["dashboard"]["uid"], "url": f"/d/{body['dashboard']['uid']}/x"})
        else:
            self._reply(404, {"message": "no route"})

    def log_message(self, *args: object) -> None:
        pass


def test_push_creates_folder_once_and_upserts_every_dashboard() -> None:
    server = HTTPServer(("127.0.0.1", 0), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        urls = push(url, "glsa_test")
        urls_again = push(url, "glsa_test")
    finally:
        server.shutdown()
        server.server_close()
    assert len(urls) == len(DASHBOARDS) == len(urls_again)
    folder_posts = [c for c in FakeGrafana.calls if c[0] == "POST" and c[1] == "/api/folders"]
    assert len(folder_posts) == 1 and folder_posts[0][2]["uid"] == FOLDER_UID
    uploads = [c for c in FakeGrafana.calls if c[1] == "/api/dashboards/db"]
    assert len(uploads) == 2 * len(DASHBOARDS)
    assert all(c[2]["overwrite"] and c[2]["folderUid"] == FOLDER_UID and c[2]["dashboard"]["uid"].startswith("runstream-")
               for c in uploads)
    assert all(c[3] == "Bearer glsa_test" for c in FakeGrafana.calls)
