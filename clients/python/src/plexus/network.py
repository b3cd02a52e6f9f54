"""The connection to a Plexus coordinator's HTTP/JSON API (``/v1``).

One :class:`Network` holds one mutual-TLS identity (a researcher, an
auditor, an admin) and an ``httpx.Client``. Studies, the dictionary and the
audit calls hang off it; queries go through :class:`~plexus.study.Study`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Union

import httpx
from ._pandas import pd

from . import audit as _audit
from ._tls import Identity, explain_tls_failure, ssl_context
from .errors import PlexusConnectionError, Unavailable, error_from_body
from .study import Study

__all__ = ["Network", "DEFAULT_TIMEOUT"]

#: Seconds a single HTTP request may take (a query's own wait is separate: see ``Study`` methods' ``timeout``).
DEFAULT_TIMEOUT = 30.0

TimeLike = Union[int, float, str, _dt.datetime, _dt.date, None]


def _unix_ms(t: TimeLike) -> Optional[int]:
    if t is None:
        return None
    if isinstance(t, (int, float)):
        return int(t)
    if isinstance(t, str):
        t = _dt.datetime.fromisoformat(t)
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return int(t.timestamp() * 1000)
    if isinstance(t, _dt.date):
        return int(_dt.datetime(t.year, t.month, t.day, tzinfo=_dt.timezone.utc).timestamp() * 1000)
    raise TypeError(f"a time is unix milliseconds, an ISO string, a datetime or a date, not {type(t).__name__}")


class Network:
    """A Plexus network, reached at ``url`` over mutual TLS.

    ``ca`` is the network's CA certificate (``pki/ca.pem``), ``cert`` and
    ``key`` this user's certificate and key. ``role`` only names them in
    error messages. A missing, unreadable or expired file raises
    :class:`~plexus.PlexusConnectionError` here, before any request.

    ``http2=True`` offers HTTP/2 (needs the ``h2`` package: ``pip install
    'httpx[http2]'``); by default the client speaks HTTP/1.1.

    ``transport`` replaces the network transport (``httpx.MockTransport`` in
    tests); the TLS files are then not read.
    """

    def __init__(
        self,
        url: str,
        ca: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        *,
        role: str = "client",
        timeout: float = DEFAULT_TIMEOUT,
        http2: bool = False,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.url: str = url.rstrip("/")
        self.identity: Identity = Identity(ca=ca or "", cert=cert or "", key=key or "", role=role)
        #: Where the demo's connect file said the reference data and studies are (``from_connect_file`` only).
        self.connect_info: Dict[str, Any] = {}
        if transport is None:
            verify: Any = ssl_context(self.identity, http2)
            self._client = httpx.Client(base_url=self.url, verify=verify, timeout=timeout, http2=http2)
        else:
            self._client = httpx.Client(base_url=self.url, transport=transport, timeout=timeout)

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_pki(cls, pki_dir: str, as_: str = "alice", url: str = "https://127.0.0.1:50051", **kwargs: Any) -> "Network":
        """Connects with the command line's ``--pki DIR --as NAME`` layout: ``DIR/ca.pem``, ``DIR/NAME.pem``, ``DIR/NAME.key``."""
        kwargs.setdefault("role", as_)
        return cls(url, os.path.join(pki_dir, "ca.pem"), os.path.join(pki_dir, f"{as_}.pem"),
                   os.path.join(pki_dir, f"{as_}.key"), **kwargs)

    @classmethod
    def from_connect_file(cls, path: str, role: str = "researcher", **kwargs: Any) -> "Network":
        """Connects as one of the identities of ``plexus demo --serve``'s ``connect.json``.

        ``role`` is a key of its ``identities``: ``researcher``,
        ``outsider``, ``auditor`` or ``admin``. The file's other fields
        (``studies``, ``reference``) are kept in :attr:`connect_info`.
        """
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
        except FileNotFoundError as e:
            raise PlexusConnectionError(
                f"the connect file {path} does not exist (plexus demo --serve --dir DIR writes DIR/connect.json)",
                path=path, role=role) from e
        identities = info.get("identities", {})
        if role not in identities:
            raise PlexusConnectionError(
                f"the connect file {path} has no identity {role!r} (it has: {', '.join(sorted(identities))})",
                path=path, role=role)
        ident = identities[role]
        label = f"{role} ({ident.get('name')})" if ident.get("name") else role
        net = cls(info["url"], info.get("ca") or os.path.join(info.get("pki", ""), "ca.pem"), ident["cert"],
                  ident["key"], role=label, **kwargs)
        net.connect_info = info
        return net

    def close(self) -> None:
        """Closes the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<plexus.Network {self.url} as {self.identity.role}>"

    # -- HTTP ---------------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json_body: Any = None, params: Optional[Mapping[str, Any]] = None,
                timeout: Optional[float] = None) -> Any:
        """Sends one request to ``/v1...`` and returns the decoded JSON.

        A non-2xx answer raises the :class:`~plexus.PlexusError` subclass of
        its ``error.code``; a TLS or connection failure raises
        :class:`~plexus.PlexusConnectionError` saying what to check.
        """
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        extra: Dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        try:
            response = self._client.request(method, path, json=json_body, params=clean or None, **extra)
        except httpx.ConnectTimeout as e:
            raise PlexusConnectionError(
                f"cannot connect to {self.url}: no answer to the connection within "
                f"{self._client.timeout.connect} s (is the address right, is a firewall in the way?)",
                role=self.identity.role) from e
        except httpx.TimeoutException as e:
            raise Unavailable("unavailable", f"the coordinator at {self.url} did not answer {method} {path} in time "
                                             f"({type(e).__name__})") from e
        except (httpx.TransportError, OSError) as e:
            raise explain_tls_failure(e, self.identity, self.url) from e
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = None
            raise error_from_body(response.status_code, body, response.text)
        if not response.content:
            return None
        return response.json()

    # -- studies and dictionary ---------------------------------------------------------------------------------

    def studies(self) -> pd.DataFrame:
        """The studies this identity may see: id, title, exact, budget_rho, query_rho, min_nodes, nodes, analyses, researchers, purpose."""
        rows = []
        for s in self.request("GET", "/v1/studies").get("studies", []):
            privacy = s.get("privacy") or {}
            purpose = s.get("purpose") or {}
            rows.append({
                "id": s.get("id"), "title": s.get("title"), "exact": privacy.get("exact"),
                "budget_rho": privacy.get("budget_rho"), "query_rho": privacy.get("query_rho"),
                "min_nodes": s.get("min_nodes"), "nodes": s.get("nodes"), "analyses": s.get("analyses"),
                "researchers": s.get("researchers"), "purpose": purpose.get("code"),
            })
        return pd.DataFrame(rows, columns=["id", "title", "exact", "budget_rho", "query_rho", "min_nodes", "nodes",
                                           "analyses", "researchers", "purpose"])

    def study(self, study_id: str, fetch: bool = True) -> Study:
        """The study ``study_id``.

        Its definition is fetched now (``fetch=True``), so an unknown id, or
        a study this identity may not see, raises :class:`~plexus.NotFound`
        here. With ``fetch=False`` nothing is asked until the first query,
        whose error then says why (``PolicyRefused`` for a non-member).
        """
        info = self.request("GET", f"/v1/studies/{study_id}") if fetch else {"id": study_id}
        return Study(self, study_id, info)

    def _variables(self) -> List[Dict[str, Any]]:
        """The dictionary's variables with ``levels`` (a categorical variable's ``categories``, else None)."""
        out = []
        for v in self.request("GET", "/v1/dictionary").get("variables", []):
            v = dict(v)
            v["levels"] = list(v.get("categories") or v.get("levels") or []) or None
            out.append(v)
        return out

    def dictionary(self) -> pd.DataFrame:
        """The network's data dictionary: name, type, levels, description, unit, min, max.

        ``levels`` are a categorical variable's categories in the
        dictionary's order (the first is a model's reference level), else
        None; ``min`` and ``max`` the public bounds as the dictionary writes
        them.
        """
        return pd.DataFrame(self._variables(), columns=["name", "type", "levels", "description", "unit", "min", "max"])

    def _variable(self, name: str) -> Dict[str, Any]:
        for v in self._variables():
            if v.get("name") == name:
                return v
        from .errors import InvalidQuery  # noqa: PLC0415

        raise InvalidQuery("invalid", f"variable {name!r} is not in the data dictionary")

    # -- audit (auditor role) -----------------------------------------------------------------------------------

    def audit_log(self, study_id: Optional[str] = None, who: Optional[str] = None, since: TimeLike = None,
                  until: TimeLike = None, limit: Optional[int] = None) -> pd.DataFrame:
        """Audit events (auditor role), filtered; times as unix ms, ISO strings or datetimes (UTC if naive).

        Columns are the events' fields, with ``at`` as a UTC timestamp
        next to ``at_unix_ms``.
        """
        params = {"study_id": study_id, "who": who, "since_unix_ms": _unix_ms(since),
                  "until_unix_ms": _unix_ms(until), "limit": limit}
        events = self.request("GET", "/v1/audit/events", params=params).get("events", [])
        frame = pd.DataFrame(events)
        if "at_unix_ms" in frame:
            frame.insert(1 if "seq" in frame else 0, "at", pd.to_datetime(frame["at_unix_ms"], unit="ms", utc=True))
        return frame

    def audit_events(self, **filters: Any) -> List[Dict[str, Any]]:
        """The same events as :meth:`audit_log`, as the JSON objects (what :func:`plexus.audit.entry_leaf` takes)."""
        params = {"study_id": filters.get("study_id"), "who": filters.get("who"),
                  "since_unix_ms": _unix_ms(filters.get("since")), "until_unix_ms": _unix_ms(filters.get("until")),
                  "limit": filters.get("limit")}
        return list(self.request("GET", "/v1/audit/events", params=params).get("events", []))

    def checkpoint(self) -> Dict[str, Any]:
        """The coordinator's latest signed checkpoint: origin, size, root, at_unix_ms, signature, public_key."""
        return dict(self.request("GET", "/v1/audit/checkpoint"))

    def inclusion_proof(self, seq: int) -> Dict[str, Any]:
        """Event ``seq`` with a checkpoint and the proof that it is in that checkpoint's tree."""
        return dict(self.request("GET", f"/v1/audit/inclusion/{int(seq)}"))

    def consistency_proof(self, old_size: int) -> Dict[str, Any]:
        """The latest checkpoint and the proof that the tree of ``old_size`` entries is its prefix."""
        return dict(self.request("GET", "/v1/audit/consistency", params={"old_size": int(old_size)}))

    def evidence(self, query_id: str) -> Dict[str, Any]:
        """What the coordinator holds about a query: its hash, status, and each node's job."""
        return dict(self.request("GET", f"/v1/queries/{query_id}/evidence"))

    def verify_inclusion(self, proof: Union[int, Mapping[str, Any]],
                         public_key: Union[str, bytes, None] = None) -> _audit.InclusionCheck:
        """Checks an inclusion proof (or fetches and checks the one for ``seq``).

        Recomputes the event's leaf and the Merkle root from the proof path,
        compares it with the checkpoint's root and, if ``cryptography`` is
        installed, checks the checkpoint's Ed25519 signature (against
        ``public_key`` when given; pin it for a check that does not trust
        the coordinator). Raises :class:`~plexus.VerificationFailed`.
        """
        if isinstance(proof, int):
            proof = self.inclusion_proof(proof)
        return _audit.verify_inclusion(proof, public_key)

    def verify_consistency(self, old_checkpoint: Mapping[str, Any],
                           public_key: Union[str, bytes, None] = None) -> Dict[str, Any]:
        """Checks that the log grew from ``old_checkpoint`` only by appending; returns the new checkpoint."""
        if int(old_checkpoint["size"]) == 0:
            # Nothing to prove about an empty log: any log extends it.
            answer: Dict[str, Any] = {"checkpoint": self.checkpoint(), "proof": ""}
        else:
            answer = self.consistency_proof(int(old_checkpoint["size"]))
        new = answer["checkpoint"]
        _audit.verify_checkpoint_signature(new, public_key)
        _audit.verify_consistency(int(old_checkpoint["size"]), str(old_checkpoint["root"]), int(new["size"]),
                                  str(new["root"]), answer.get("proof") or "")
        return dict(new)
