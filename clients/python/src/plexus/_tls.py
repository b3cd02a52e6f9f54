"""Mutual TLS: the SSL context and messages that say what to check.

A researcher connects with the network's CA (``ca.pem``) and their own
certificate and key, as the command line does with ``--pki DIR --as NAME``.
Most connection failures are one of three things: a file that is not
there, a certificate past its date, or a CA that is not the network's. The
checks below name the file and the role in the message instead of leaving
the caller with an OpenSSL error code.
"""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass
from typing import Optional

from .errors import PlexusConnectionError


@dataclass(frozen=True)
class Identity:
    """The files one connects with, and who they are for (for messages)."""

    ca: str
    cert: str
    key: str
    role: str = "client"

    def describe(self) -> str:
        """``the researcher certificate /x/alice.pem`` style text for messages."""
        return f"the {self.role} certificate {self.cert}"


def _check_file(path: str, what: str, role: str) -> None:
    if not path:
        raise PlexusConnectionError(f"no {what} given for the {role}", role=role)
    if not os.path.isfile(path):
        raise PlexusConnectionError(
            f"the {what} {path} for the {role} does not exist (check the path, or the --pki directory and name)",
            path=path,
            role=role,
        )
    if not os.access(path, os.R_OK):
        raise PlexusConnectionError(
            f"the {what} {path} for the {role} is not readable by this user", path=path, role=role
        )


def _not_after(path: str) -> Optional[float]:
    """The certificate's expiry as a unix time, when the standard library can read it."""
    try:
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        return float(ssl.cert_time_to_seconds(decoded["notAfter"]))
    except Exception:  # noqa: BLE001 - best effort: the handshake still decides
        return None


def _not_before(path: str) -> Optional[float]:
    try:
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        return float(ssl.cert_time_to_seconds(decoded["notBefore"]))
    except Exception:  # noqa: BLE001
        return None


def ssl_context(identity: Identity, http2: bool = False) -> ssl.SSLContext:
    """A client context that trusts only the network's CA and presents the identity's certificate.

    Raises :class:`PlexusConnectionError` naming the file when one is
    missing, unreadable, malformed, expired or not yet valid, or when the
    key does not belong to the certificate.
    """
    role = identity.role
    _check_file(identity.ca, "CA certificate", role)
    _check_file(identity.cert, "certificate", role)
    _check_file(identity.key, "private key", role)
    now = time.time()
    expires = _not_after(identity.cert)
    if expires is not None and expires < now:
        raise PlexusConnectionError(
            f"{identity.describe()} expired on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(expires))}: "
            f"ask the network admin for a new one",
            path=identity.cert,
            role=role,
        )
    starts = _not_before(identity.cert)
    if starts is not None and starts > now + 300:
        raise PlexusConnectionError(
            f"{identity.describe()} is not valid before "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(starts))}: check this machine's clock",
            path=identity.cert,
            role=role,
        )
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        ctx.load_verify_locations(cafile=identity.ca)
    except (ssl.SSLError, ValueError) as e:
        raise PlexusConnectionError(
            f"the CA certificate {identity.ca} for the {role} is not a PEM certificate ({e})",
            path=identity.ca,
            role=role,
        ) from e
    try:
        ctx.load_cert_chain(certfile=identity.cert, keyfile=identity.key)
    except ssl.SSLError as e:
        raise PlexusConnectionError(
            f"{identity.describe()} and the key {identity.key} do not load together ({e.reason or e}): "
            f"check that both are PEM and that the key is the certificate's",
            path=identity.cert,
            role=role,
        ) from e
    # The coordinator serves gRPC and this API on one port and tells them
    # apart by ALPN: a connection that chose HTTP/1.1 gets the API, any
    # other is taken for HTTP/2 (where the API is served too).
    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return ctx


def explain_tls_failure(error: BaseException, identity: Identity, url: str) -> PlexusConnectionError:
    """Turns a failed connection into a message that says what to check."""
    text = f"{error!r} {error}"
    lower = text.lower()
    if "certificate verify failed" in lower or "certificate_verify_failed" in lower:
        if "hostname" in lower or "ip address mismatch" in lower:
            hint = (
                f"the coordinator's certificate is not for the host in {url}: "
                "use the address the certificate names (localhost or 127.0.0.1 for the demo)"
            )
        elif "expired" in lower:
            hint = "the coordinator's certificate has expired: tell the network admin"
        else:
            hint = (
                f"the coordinator's certificate does not chain to the CA in {identity.ca}: "
                "check that this is the network's CA (pki/ca.pem of the network you connect to)"
            )
        return PlexusConnectionError(f"cannot connect to {url}: {hint}", path=identity.ca, role=identity.role)
    if "expired" in lower:
        return PlexusConnectionError(
            f"cannot connect to {url}: the coordinator refused {identity.describe()} as expired: "
            "ask the network admin for a new one",
            path=identity.cert,
            role=identity.role,
        )
    if any(s in lower for s in ("unknown ca", "unknown_ca", "bad certificate", "bad_certificate",
                                "certificate required", "certificate_required", "handshake failure",
                                "decrypt error", "access denied", "certificate unknown")):
        return PlexusConnectionError(
            f"cannot connect to {url}: the coordinator refused {identity.describe()} "
            f"(the TLS alert says: {error}); check that it was issued by the network's CA and not revoked, "
            "and that the key matches it",
            path=identity.cert,
            role=identity.role,
        )
    if "eof occurred in violation of protocol" in lower or "unexpected eof" in lower or "connection reset" in lower:
        return PlexusConnectionError(
            f"cannot connect to {url}: the coordinator closed the connection during the TLS handshake, "
            f"which is how it refuses {identity.describe()}: check that it was issued by the network's CA "
            f"({identity.ca}), is not revoked or expired, and that the key matches it",
            path=identity.cert,
            role=identity.role,
        )
    if "connection refused" in lower or "errno 111" in lower:
        return PlexusConnectionError(
            f"cannot connect to {url}: nothing listens there (is the coordinator running, is the port right?)",
            role=identity.role,
        )
    return PlexusConnectionError(
        f"cannot connect to {url} as the {identity.role} ({error}); check the URL, the CA {identity.ca} "
        f"and {identity.describe()}",
        role=identity.role,
    )
