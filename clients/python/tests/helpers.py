"""Shared helpers for the unit tests: recorded results and a mocked coordinator."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List

import httpx

import plexus

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture(name: str) -> Dict[str, Any]:
    """A QueryResult envelope from tests/fixtures/NAME.json."""
    with open(os.path.join(FIXTURES, f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


class FakeCoordinator:
    """Answers /v1 requests from canned envelopes and records what was sent."""

    def __init__(self, results: List[Dict[str, Any]], pending_polls: int = 0) -> None:
        self.results = list(results)
        self.pending_polls = pending_polls
        self.requests: List[httpx.Request] = []
        self.bodies: List[Dict[str, Any]] = []
        self._current: Dict[str, Any] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "POST" and path.endswith("/queries"):
            body = json.loads(request.content)
            self.bodies.append(body)
            self._current = self.results.pop(0)
            self._polls = self.pending_polls
            return httpx.Response(202, json={"query_id": self._current["query_id"], "study_id": "aaa-validation",
                                             "status": "pending"})
        if request.method == "GET" and path.startswith("/v1/queries/"):
            if self._polls > 0:
                self._polls -= 1
                return httpx.Response(200, json=dict(self._current, status="pending", result=None))
            return httpx.Response(200, json=self._current)
        if path == "/v1/studies/aaa-validation":
            return httpx.Response(200, json={"id": "aaa-validation", "title": "Validation", "privacy": {"exact": True}})
        if path == "/v1/dictionary":
            return httpx.Response(200, json={"variables": [
                {"name": "age", "type": "integer", "categories": [], "description": "age at inclusion", "unit": "years"},
                {"name": "smoking", "type": "categorical", "categories": ["never", "former", "current"],
                 "description": "smoking status", "unit": None},
                {"name": "diabetes", "type": "boolean", "categories": [], "description": "diabetes", "unit": None},
                {"name": "bmi", "type": "float", "categories": [], "description": "BMI", "unit": "kg/m2"}]})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": f"no route {path}"}})


def mock_network(handler: Callable[[httpx.Request], httpx.Response]) -> plexus.Network:
    """A Network whose requests go to ``handler``."""
    return plexus.Network("https://coordinator.test", transport=httpx.MockTransport(handler), role="researcher")
