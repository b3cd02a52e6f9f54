"""A fake coordinator over mutual TLS, answering from the recorded fixtures.

For tests of what runs the client end to end (the notebook) without a live
network: it speaks the /v1 routes the quick start uses and writes a
connect.json like ``plexus demo --serve`` does.
"""

from __future__ import annotations

import itertools
import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, Tuple
from urllib.parse import parse_qs, urlparse

from helpers import fixture
from pki import issue, make_ca

DICTIONARY = {"variables": [
    {"name": "age", "type": "integer", "categories": [], "description": "age at inclusion", "unit": "years"},
    {"name": "sex", "type": "categorical", "categories": ["F", "M"], "description": "sex", "unit": None},
    {"name": "smoking", "type": "categorical", "categories": ["never", "former", "current"], "description": "smoking",
     "unit": None},
    {"name": "diabetes", "type": "boolean", "categories": [], "description": "diabetes", "unit": None},
    {"name": "death", "type": "boolean", "categories": [], "description": "death", "unit": None},
    {"name": "followup_days", "type": "integer", "categories": [], "description": "follow-up", "unit": "days"},
]}
STUDIES = [
    {"id": "aaa-validation", "title": "exact validation", "privacy": {"exact": True, "budget_rho": 0, "query_rho": 0},
     "min_nodes": 2, "nodes": ["hospital-a", "hospital-b", "hospital-c"], "analyses": ["count", "glm", "kaplan_meier"],
     "researchers": ["alice"], "purpose": {"code": "DS"}},
    {"id": "aaa-outcomes", "title": "private", "privacy": {"exact": False, "budget_rho": 1.0, "query_rho": 0.01},
     "min_nodes": 2, "nodes": ["hospital-a", "hospital-b", "hospital-c"], "analyses": ["count"],
     "researchers": ["alice"], "purpose": {"code": "DS"}},
]


def route(method: str, path: str, query: Dict[str, Any], body: Any, queries: Dict[str, Any],
          ids: Iterator[int]) -> Tuple[int, Any]:
    """(status, JSON) for one request."""
    if method == "GET" and path == "/v1/studies":
        return 200, {"studies": STUDIES}
    if method == "GET" and path == "/v1/dictionary":
        return 200, DICTIONARY
    parts = path.strip("/").split("/")
    if parts[:2] == ["v1", "studies"] and len(parts) >= 3:
        study = next((s for s in STUDIES if s["id"] == parts[2]), None)
        if study is None:
            return 404, {"error": {"code": "not_found", "message": f'study "{parts[2]}" does not exist'}}
        if len(parts) == 3:
            return 200, study
        if parts[3] == "budget":
            return 200, {"study_id": study["id"], "exact": study["privacy"]["exact"], "budget_rho": 1.0,
                         "spent_rho": 0.01, "remaining_rho": 0.99, "delta": 1e-6, "epsilon_spent": 0.6,
                         "epsilon_budget": 8.4, "queries_charged": 1, "nodes": []}
        if parts[3] == "queries" and method == "POST":
            analysis = body.get("analysis", {})
            if "glm" in analysis and "agee" in analysis["glm"].get("formula", ""):
                return 400, {"error": {"code": "invalid", "message":
                                       'column 9: variable "agee" is not in the data dictionary (did you mean "age"?)'}}
            kind = next(iter(analysis))
            name = {"count": "count", "glm": "glm_binomial", "kaplan_meier": "km", "cox": "cox"}.get(kind, "count")
            qid = f"q{next(ids)}"
            queries[qid] = dict(fixture(name), query_id=qid, study_id=study["id"])
            return 202, {"query_id": qid, "study_id": study["id"], "status": "pending"}
    if parts[:2] == ["v1", "queries"] and len(parts) == 3:
        if parts[2] not in queries:
            return 404, {"error": {"code": "not_found", "message": f"no query {parts[2]}"}}
        return 200, queries[parts[2]]
    return 404, {"error": {"code": "not_found", "message": f"no route {method} {path}"}}


class FakeCoordinator:
    """Serves :func:`route` over HTTPS with client certificates; ``connect_path`` is its connect.json."""

    def __init__(self, directory: str) -> None:
        pki = os.path.join(directory, "pki")
        os.makedirs(pki, exist_ok=True)
        ca, ca_key = make_ca(pki)
        cert, key = issue(pki, "coordinator", ca, ca_key, server=True)
        alice = issue(pki, "alice", ca, ca_key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        queries: Dict[str, Any] = {}
        ids = itertools.count(1)

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, answer = route(self.command, url.path, parse_qs(url.query), body, queries, ids)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.connect_path = os.path.join(directory, "connect.json")
        with open(self.connect_path, "w", encoding="utf-8") as f:
            json.dump({"url": self.url, "pki": pki, "ca": ca,
                       "identities": {"researcher": {"name": "alice", "cert": alice[0], "key": alice[1]}},
                       "studies": {"private": "aaa-outcomes", "exact": "aaa-validation"}}, f)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
