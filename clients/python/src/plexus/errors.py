"""Typed exceptions for the coordinator's error codes.

The coordinator answers every failure with ``{"error": {"code", "message"}}``
and a failed query carries the same object in its ``error`` field. Each
stable code maps to one exception class here, so a caller can catch the
class it can act on (``except plexus.PolicyRefused``) and read the server's
own message as the exception's text.

Failures to reach the coordinator at all (files missing, a certificate
expired, the wrong CA) are :class:`PlexusConnectionError`, a subclass of the
built-in :class:`ConnectionError`, whose message says which file and role to
check.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "PlexusError",
    "InvalidQuery",
    "PolicyRefused",
    "DisclosureRefused",
    "DataError",
    "NotFound",
    "Unavailable",
    "InternalError",
    "Unauthenticated",
    "QueryTimeout",
    "VerificationFailed",
    "PlexusConnectionError",
    "error_from_body",
    "error_from_object",
]


class PlexusError(Exception):
    """An error the coordinator reported, with its stable ``code``.

    ``str(err)`` is the server's message; ``err.code`` the stable code
    (``invalid``, ``policy``, ``disclosure``, ``data``, ``not_found``,
    ``unavailable``, ``internal``, ``unauthenticated``); ``err.status`` the
    HTTP status when the error came from a response.
    """

    #: The stable code this class stands for (``None`` on the base class).
    default_code: Optional[str] = None

    def __init__(
        self,
        code: Optional[str],
        message: str,
        *,
        status: Optional[int] = None,
        query_id: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.code: str = code or self.default_code or "unknown"
        self.message: str = message
        self.status: Optional[int] = status
        self.query_id: Optional[str] = query_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidQuery(PlexusError):
    """``invalid``: a malformed query, formula or cohort, an unknown variable, a bad parameter."""

    default_code = "invalid"


class PolicyRefused(PlexusError):
    """``policy``: not a member of the study, a role that may not call, budget exhausted, analysis not allowed."""

    default_code = "policy"


class DisclosureRefused(PlexusError):
    """``disclosure``: refused by disclosure control (a cohort too small, for instance)."""

    default_code = "disclosure"


class DataError(PlexusError):
    """``data``: a node's data cannot answer the query."""

    default_code = "data"


class NotFound(PlexusError):
    """``not_found``: an unknown study or query id."""

    default_code = "not_found"


class Unavailable(PlexusError):
    """``unavailable``: too few nodes, the coordinator starting or draining, a timeout at the coordinator."""

    default_code = "unavailable"


class InternalError(PlexusError):
    """``internal``: a fault at the coordinator; worth reporting to the network's admins."""

    default_code = "internal"


class Unauthenticated(PlexusError):
    """``unauthenticated``: no valid client certificate reached the coordinator."""

    default_code = "unauthenticated"


class QueryTimeout(PlexusError, TimeoutError):
    """The query was still pending when the caller's timeout ran out.

    The query keeps running at the coordinator: ``err.query_id`` names it,
    and ``Study.handle(err.query_id).result()`` resumes waiting.
    """

    default_code = "timeout"


class VerificationFailed(PlexusError):
    """An audit proof or checkpoint signature did not verify."""

    default_code = "verification"


class PlexusConnectionError(ConnectionError):
    """The coordinator could not be reached over mutual TLS.

    The message names what to check: which file (CA, certificate, key), for
    which role, and why (missing, expired, not signed by the network's CA).
    """

    def __init__(self, message: str, *, path: Optional[str] = None, role: Optional[str] = None) -> None:
        super().__init__(message)
        self.path: Optional[str] = path
        self.role: Optional[str] = role


_BY_CODE: Dict[str, Type[PlexusError]] = {
    "invalid": InvalidQuery,
    "policy": PolicyRefused,
    "disclosure": DisclosureRefused,
    "data": DataError,
    "not_found": NotFound,
    "unavailable": Unavailable,
    "internal": InternalError,
    "unauthenticated": Unauthenticated,
}

_BY_STATUS: Dict[int, str] = {
    400: "invalid",
    401: "unauthenticated",
    403: "policy",
    404: "not_found",
    422: "data",
    500: "internal",
    503: "unavailable",
}


def error_from_object(
    error: Mapping[str, Any], *, status: Optional[int] = None, query_id: Optional[str] = None
) -> PlexusError:
    """The exception for an ``{"code", "message"}`` object (a response's or a failed query's)."""
    code = str(error.get("code") or (_BY_STATUS.get(status or 0) if status else None) or "unknown")
    message = str(error.get("message") or f"the coordinator reported {code} without a message")
    cls = _BY_CODE.get(code, PlexusError)
    return cls(code, message, status=status, query_id=query_id)


def error_from_body(status: int, body: Any, text: str = "") -> PlexusError:
    """The exception for a non-2xx response: its ``error`` object, else its status."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        return error_from_object(body["error"], status=status)
    code = _BY_STATUS.get(status, "internal" if status >= 500 else "invalid")
    detail = text.strip()[:500] or "no error body"
    return _BY_CODE[code](code, f"HTTP {status} without an error object: {detail}", status=status)
