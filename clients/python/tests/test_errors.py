"""Error bodies and failed results map to typed exceptions carrying the server's message."""

from __future__ import annotations

import httpx
import pytest

import plexus

from helpers import mock_network

CASES = [
    ("invalid", 400, plexus.InvalidQuery),
    ("policy", 403, plexus.PolicyRefused),
    ("disclosure", 422, plexus.DisclosureRefused),
    ("data", 422, plexus.DataError),
    ("not_found", 404, plexus.NotFound),
    ("unavailable", 503, plexus.Unavailable),
    ("internal", 500, plexus.InternalError),
    ("unauthenticated", 401, plexus.Unauthenticated),
]


@pytest.mark.parametrize("code,status,cls", CASES)
def test_error_body_maps_to_class(code, status, cls):
    message = f'column 9: variable "sbpp" is not in the data dictionary (did you mean "sbp"?) [{code}]'

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": code, "message": message}})
    with pytest.raises(cls) as e:
        mock_network(handler).studies()
    assert str(e.value) == message
    assert e.value.code == code and e.value.status == status
    assert isinstance(e.value, plexus.PlexusError)


@pytest.mark.parametrize("code,status,cls", CASES)
def test_failed_result_maps_to_class(code, status, cls):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"query_id": "q1", "study_id": "s", "status": "pending"})
        if request.url.path == "/v1/studies/s":
            return httpx.Response(200, json={"id": "s"})
        return httpx.Response(200, json={"query_id": "q1", "study_id": "s", "status": "failed",
                                         "error": {"code": code, "message": "it failed"}, "result": None})
    with pytest.raises(cls, match="^it failed$"):
        mock_network(handler).study("s").count()


def test_body_without_error_object_falls_back_to_status():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="upstream connect error")
    with pytest.raises(plexus.Unavailable, match="HTTP 503 without an error object: upstream connect error"):
        mock_network(handler).studies()


def test_unknown_code_is_the_base_class():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(418, json={"error": {"code": "teapot", "message": "short and stout"}})
    with pytest.raises(plexus.PlexusError) as e:
        mock_network(handler).studies()
    assert type(e.value) is plexus.PlexusError and e.value.code == "teapot"


def test_unknown_study_raises_not_found_at_study():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "not_found", "message": 'study "nope" does not exist'}})
    with pytest.raises(plexus.NotFound, match='study "nope" does not exist'):
        mock_network(handler).study("nope")


def test_read_timeout_is_unavailable():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)
    with pytest.raises(plexus.Unavailable, match="did not answer GET /v1/studies in time"):
        mock_network(handler).studies()
