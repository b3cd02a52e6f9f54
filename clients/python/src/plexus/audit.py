"""Checking the audit log's proofs without trusting the coordinator's word.

The coordinator's audit log is an append-only Merkle tree as in Certificate
Transparency (RFC 6962/9162: SHA-256, leaves hashed with a 0x00 prefix,
interior nodes with 0x01). A tree leaf is the SHA-256 of an entry's
canonical bytes (``core/src/audit.rs``, ``AuditEntry::canonical_bytes``):

    b"plexus-audit-entry-v1\\n" + the entry as compact JSON, fields in
    declaration order, as Rust's serde_json writes it

Entry ``seq`` is leaf ``seq - 1``. A checkpoint is signed with Ed25519 over
``"plexus audit checkpoint v1\\n{origin}\\n{size}\\n{root}\\n{at_unix_ms}\\n"``
(``core/src/merkle.rs``, ``Checkpoint::signed_bytes``).

The signature is checked only when the optional ``cryptography`` package is
installed; pin the coordinator's key (``public_key=``) rather than trusting
the one a checkpoint carries, or the check proves only self-consistency.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, List, Mapping, Sequence, Union

from .errors import VerificationFailed

__all__ = [
    "canonical_bytes",
    "leaf_hash",
    "entry_leaf",
    "signed_bytes",
    "root_from_inclusion_proof",
    "verify_inclusion",
    "verify_consistency",
    "verify_checkpoint_signature",
    "InclusionCheck",
]

CANONICAL_TAG = b"plexus-audit-entry-v1\n"

#: Fields of ``AuditEntry`` in declaration order; the HTTP event's ``at_unix_ms`` is the entry's ``at``.
_FIELDS = [
    ("seq", "int"), ("at", "int"), ("who", "str"), ("role", "str"), ("action", "str"), ("study_id", "str"),
    ("purpose", "str"), ("query_id", "str"), ("job_id", "str"), ("node_id", "str"), ("nodes", "strs"),
    ("query_hash", "str"), ("result_size", "opt_int"), ("suppressed", "int"), ("privacy_cost", "opt_float"),
    ("privacy_remaining", "opt_float"), ("outcome", "str"), ("detail", "str"),
]


def _rust_float(x: float) -> str:
    """An f64 as serde_json writes it (ryu): shortest round-trip digits, Rust's layout.

    Python's ``repr`` gives the same shortest digits but a different layout
    (``1e-05`` where ryu writes ``0.00001``, ``1e+16`` where it writes
    ``1e16``), so the digits are re-laid out here.
    """
    if not math.isfinite(x):
        return "null"  # serde_json writes NaN and infinities as null
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    r = repr(abs(x))
    if "e" in r:
        mant, exp_s = r.split("e")
        exp = int(exp_s)
    else:
        mant, exp = r, 0
    if "." in mant:
        ip, fp = mant.split(".")
    else:
        ip, fp = mant, ""
    digits = (ip + fp).lstrip("0")
    # value = 0.digits * 10^point, as ryu thinks of it: point = position of the decimal point
    lead_zeros = len(ip + fp) - len((ip + fp).lstrip("0"))
    point = len(ip) + exp - lead_zeros
    digits = digits.rstrip("0")
    length = len(digits)
    if 0 <= point <= 16 and length <= point:
        # an integer: digits, zeros, ".0"
        return sign + digits + "0" * (point - length) + ".0"
    if 0 < point <= 16:
        return sign + digits[:point] + "." + digits[point:]
    if -5 < point <= 0:
        return sign + "0." + "0" * (-point) + digits
    e = point - 1
    body = digits[0] + ("." + digits[1:] if length > 1 else "")
    return f"{sign}{body}e{e}"


def _json_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def canonical_bytes(event: Mapping[str, Any]) -> bytes:
    """An audit event's canonical bytes, exactly as the coordinator hashes them.

    ``event`` is an entry from ``/v1/audit/events`` or an inclusion proof
    (``at_unix_ms``) or the Rust field names (``at``).
    """
    parts = []
    for name, typ in _FIELDS:
        if name == "at":
            value = event.get("at", event.get("at_unix_ms"))
        else:
            value = event.get(name)
        if typ == "int":
            text = str(int(value if value is not None else 0))
        elif typ == "str":
            text = _json_str("" if value is None else str(value))
        elif typ == "strs":
            text = "[" + ",".join(_json_str(str(v)) for v in (value or [])) + "]"
        elif typ == "opt_int":
            text = "null" if value is None else str(int(value))
        else:
            text = "null" if value is None else _rust_float(float(value))
        parts.append(f'"{name}":{text}')
    return CANONICAL_TAG + ("{" + ",".join(parts) + "}").encode("utf-8")


def entry_leaf(event: Mapping[str, Any]) -> bytes:
    """The 32-byte leaf of an event: SHA-256 of its canonical bytes."""
    return hashlib.sha256(canonical_bytes(event)).digest()


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _steps(proof: Union[str, bytes]) -> List[bytes]:
    raw = bytes.fromhex(proof) if isinstance(proof, str) else bytes(proof)
    if len(raw) % 32:
        raise VerificationFailed(None, f"a proof is a whole number of 32-byte hashes, got {len(raw)} bytes")
    return [raw[i:i + 32] for i in range(0, len(raw), 32)]


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Union[str, bytes]) -> bytes:
    """The root that ``proof`` leads to from leaf ``index`` of a tree of ``size`` leaves (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        raise VerificationFailed(None, f"entry index {index} is outside a tree of {size} entries")
    fn, sn, r = index, size - 1, leaf_hash(leaf)
    for p in _steps(proof):
        if sn == 0:
            raise VerificationFailed(None, "the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationFailed(None, "the inclusion proof is shorter than the tree is deep")
    return r


def verify_consistency(old_size: int, old_root: str, new_size: int, new_root: str, proof: Union[str, bytes]) -> None:
    """Checks that the tree of ``old_size`` entries is a prefix of the one of ``new_size`` (RFC 9162 2.1.4.2).

    Raises :class:`VerificationFailed` when it is not (an entry changed or removed).
    """
    if old_size == 0 and new_size >= 0:
        return  # every log extends the empty one
    old_r, new_r = bytes.fromhex(old_root), bytes.fromhex(new_root)
    if old_size == new_size:
        if old_r != new_r:
            raise VerificationFailed(None, f"split view: two checkpoints of {old_size} entries have different roots")
        return
    if not 0 < old_size < new_size:
        raise VerificationFailed(None, f"no consistency between sizes {old_size} and {new_size}")
    path = _steps(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path = [old_r] + path
    if not path:
        raise VerificationFailed(None, "the consistency proof is empty")
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationFailed(None, "the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    if not (fr == old_r and sr == new_r and sn == 0):
        raise VerificationFailed(
            None,
            f"the log of {new_size} entries (root {new_root}) is not an extension of the one of {old_size} entries "
            f"(root {old_root}): entries were changed or removed",
        )


def signed_bytes(checkpoint: Mapping[str, Any]) -> bytes:
    """The bytes a checkpoint's Ed25519 signature covers."""
    return (f"plexus audit checkpoint v1\n{checkpoint['origin']}\n{int(checkpoint['size'])}\n"
            f"{checkpoint['root']}\n{int(checkpoint['at_unix_ms'])}\n").encode("utf-8")


def _key_bytes(key: Union[str, bytes]) -> bytes:
    if isinstance(key, bytes):
        return key
    k = key.strip()
    if "BEGIN" in k:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        pub = serialization.load_pem_public_key(k.encode())
        return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        return bytes.fromhex(k)
    except ValueError:
        return base64.b64decode(k)


def verify_checkpoint_signature(checkpoint: Mapping[str, Any], public_key: Union[str, bytes, None] = None) -> bool:
    """Checks a checkpoint's Ed25519 signature; ``False`` when ``cryptography`` is not installed.

    ``public_key`` (raw 32 bytes, hex, base64 or PEM) pins the coordinator's
    key; without it the key the checkpoint carries is used. Raises
    :class:`VerificationFailed` on a bad signature.
    """
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return False
    key = public_key if public_key is not None else checkpoint.get("public_key")
    if not key:
        raise VerificationFailed(None, "the checkpoint carries no public key and none was given")
    try:
        raw_key = _key_bytes(key)
        signature = bytes.fromhex(str(checkpoint["signature"]))
    except (ValueError, binascii.Error) as e:
        raise VerificationFailed(None, f"the checkpoint's key or signature is not readable: {e}") from e
    raw_key = raw_key[-32:] if len(raw_key) > 32 else raw_key  # a DER SubjectPublicKeyInfo ends in the raw key
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(signature, signed_bytes(checkpoint))
    except (InvalidSignature, ValueError) as e:
        raise VerificationFailed(
            None,
            f"the checkpoint of {checkpoint.get('origin')} at {checkpoint.get('size')} entries does not carry "
            f"a valid signature by its key",
        ) from e
    return True


@dataclass
class InclusionCheck:
    """What :func:`verify_inclusion` established."""

    #: The entry's sequence number (from 1) and its tree index (seq - 1).
    seq: int
    index: int
    #: The entry's leaf (hex SHA-256 of its canonical bytes).
    leaf: str
    #: The root recomputed from the leaf and the proof; equal to the checkpoint's.
    root: str
    size: int
    #: Whether the checkpoint's Ed25519 signature was checked (``cryptography`` installed).
    signature_checked: bool


def verify_inclusion(proof: Mapping[str, Any], public_key: Union[str, bytes, None] = None) -> InclusionCheck:
    """Checks an inclusion proof from ``/v1/audit/inclusion/{seq}``.

    Recomputes the event's leaf from its fields, walks the proof path to a
    root, compares it with the checkpoint's root, and checks the
    checkpoint's signature when ``cryptography`` is installed. Raises
    :class:`VerificationFailed` if any step fails.
    """
    event, checkpoint = proof["event"], proof["checkpoint"]
    seq = int(event["seq"])
    size = int(checkpoint["size"])
    leaf = entry_leaf(event)
    root = root_from_inclusion_proof(leaf, seq - 1, size, proof.get("proof") or "")
    if root.hex() != str(checkpoint["root"]).lower():
        raise VerificationFailed(
            None,
            f"entry {seq} is not in the tree of size {size} with root {checkpoint['root']}: "
            f"its proof leads to {root.hex()} (the entry or the proof was altered)",
        )
    checked = verify_checkpoint_signature(checkpoint, public_key)
    return InclusionCheck(seq=seq, index=seq - 1, leaf=leaf.hex(), root=root.hex(), size=size,
                          signature_checked=checked)


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The RFC 6962 root of leaves (each a 32-byte entry leaf); for tests and whole-log checks."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return _node(merkle_root(leaves[:k]), merkle_root(leaves[k:]))
