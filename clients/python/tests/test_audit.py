"""Audit leaf bytes, Merkle proofs and checkpoint signatures, checked against the Rust definitions."""

from __future__ import annotations

import hashlib
import json
from typing import List

import pytest

import plexus
from plexus import audit

# core/src/audit.rs, a_leaf_written_with_strings_is_unchanged
LEGACY = ('{"seq":7,"at":1790000000000,"who":"alice","role":"researcher","action":"query.result",'
          '"study_id":"aaa-outcomes","purpose":"research","query_id":"q1","job_id":"","node_id":"",'
          '"nodes":["node-a","node-b"],"query_hash":"abab","result_size":12,"suppressed":2,"privacy_cost":0.01,'
          '"privacy_remaining":0.98,"outcome":"refused:policy","detail":""}')


def test_canonical_bytes_match_the_rust_test_vector():
    event = json.loads(LEGACY)
    event["at_unix_ms"] = event.pop("at")  # the HTTP API's name for it
    event["extra_field_the_api_adds"] = 1
    assert audit.canonical_bytes(event) == b"plexus-audit-entry-v1\n" + LEGACY.encode()


@pytest.mark.parametrize("value,text", [
    (0.01, "0.01"), (0.98, "0.98"), (1.0, "1.0"), (0.0, "0.0"), (100.0, "100.0"), (1e-05, "0.00001"),
    (1e-06, "1e-6"), (1.5e-07, "1.5e-7"), (123456.789, "123456.789"), (1e16, "1e16"), (1e15, "1000000000000000.0"),
    (2.5e20, "2.5e20"), (0.1 + 0.2, "0.30000000000000004"), (-0.5, "-0.5"), (0.0001234, "0.0001234"),
])
def test_floats_are_laid_out_as_serde_json_does(value, text):
    assert audit._rust_float(value) == text


def test_strings_escape_like_serde_json():
    e = json.loads(LEGACY)
    e["detail"] = 'quote " backslash \\ newline \n tab \t bell \x07 é ✓'
    body = audit.canonical_bytes(e).split(b"\n", 1)[1]
    assert b'"detail":"quote \\" backslash \\\\ newline \\n tab \\t bell \\u0007 \xc3\xa9 \xe2\x9c\x93"' in body


def _tree_proof(leaves: List[bytes], index: int) -> bytes:
    """RFC 6962 PATH(m, D[n]), by the definition."""
    if len(leaves) == 1:
        return b""
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if index < k:
        return _tree_proof(leaves[:k], index) + audit.merkle_root(leaves[k:])
    return _tree_proof(leaves[k:], index - k) + audit.merkle_root(leaves[:k])


def _consistency(leaves: List[bytes], m: int, complete: bool = True) -> bytes:
    """RFC 6962 SUBPROOF(m, D[n], b)."""
    n = len(leaves)
    if m == n:
        return b"" if complete else audit.merkle_root(leaves)
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return _consistency(leaves[:k], m, complete) + audit.merkle_root(leaves[k:])
    return _consistency(leaves[k:], m - k, False) + audit.merkle_root(leaves[:k])


def _leaves(n: int) -> List[bytes]:
    return [hashlib.sha256(str(i).encode()).digest() for i in range(n)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 13, 64, 100])
def test_inclusion_proofs_verify_for_every_index(size):
    leaves = _leaves(size)
    root = audit.merkle_root(leaves)
    for i in range(size):
        assert audit.root_from_inclusion_proof(leaves[i], i, size, _tree_proof(leaves, i).hex()) == root
    if size > 1:
        wrong = bytearray(_tree_proof(leaves, 0))
        wrong[0] ^= 1
        assert audit.root_from_inclusion_proof(leaves[0], 0, size, bytes(wrong)) != root


@pytest.mark.parametrize("old,new", [(1, 2), (2, 3), (3, 7), (4, 8), (5, 13), (7, 100), (64, 100), (99, 100)])
def test_consistency_proofs_verify(old, new):
    leaves = _leaves(new)
    old_root, new_root = audit.merkle_root(leaves[:old]).hex(), audit.merkle_root(leaves).hex()
    proof = _consistency(leaves, old).hex()
    audit.verify_consistency(old, old_root, new, new_root, proof)
    edited = _leaves(new)
    edited[0] = b"\x00" * 32
    with pytest.raises(plexus.VerificationFailed, match="not an extension"):
        audit.verify_consistency(old, audit.merkle_root(edited[:old]).hex(), new, new_root, proof)


def test_every_log_extends_the_empty_one():
    audit.verify_consistency(0, "", 5, audit.merkle_root(_leaves(5)).hex(), "")


def _signed_proof(events, seq, key=None):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = key or Ed25519PrivateKey.generate()
    leaves = [audit.entry_leaf(e) for e in events]
    checkpoint = {"origin": "coordinator", "size": len(leaves), "root": audit.merkle_root(leaves).hex(),
                  "at_unix_ms": 1796000000000}
    checkpoint["signature"] = key.sign(audit.signed_bytes(checkpoint)).hex()
    checkpoint["public_key"] = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                             serialization.PublicFormat.Raw).hex()
    return {"event": events[seq - 1], "checkpoint": checkpoint, "proof": _tree_proof(leaves, seq - 1).hex()}


def _events(n):
    base = json.loads(LEGACY)
    base["at_unix_ms"] = base.pop("at")
    return [dict(base, seq=i + 1, detail=f"event {i + 1}") for i in range(n)]


def test_verify_inclusion_end_to_end():
    pytest.importorskip("cryptography")
    events = _events(11)
    proof = _signed_proof(events, 6)
    check = audit.verify_inclusion(proof)
    assert check.seq == 6 and check.index == 5 and check.signature_checked and check.size == 11
    tampered = dict(proof, event=dict(proof["event"], who="mallory"))
    with pytest.raises(plexus.VerificationFailed, match="entry 6 is not in the tree"):
        audit.verify_inclusion(tampered)
    bad_sig = dict(proof, checkpoint=dict(proof["checkpoint"], at_unix_ms=1))
    with pytest.raises(plexus.VerificationFailed, match="valid signature"):
        audit.verify_inclusion(bad_sig)


def test_pinned_key_must_match():
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    proof = _signed_proof(_events(3), 2)
    other = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                   serialization.PublicFormat.Raw)
    with pytest.raises(plexus.VerificationFailed):
        audit.verify_inclusion(proof, public_key=other)
