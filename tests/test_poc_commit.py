"""The PoC Merkle mountain range: roots, proofs, and tampered proofs."""

import hashlib
import struct

import pytest

from ditproof.poc.commit import (
    EMPTY_ROOT,
    MerkleMountainRange,
    build_mmr,
    leaf_bytes,
    peak_layout,
    verify_proof,
)
from ditproof.protocol.poc import PocArtifact, PocProof


def _artifact(nonce: int) -> PocArtifact:
    import base64

    return PocArtifact(nonce=nonce, vector_b64=base64.b64encode(bytes([nonce % 251]) * 24).decode())


def _reference_root(leaves: list[bytes]) -> str:
    """The root from the definition, written independently: peaks by binary digits, bagged from the right."""

    def tree(items: list[bytes]) -> bytes:
        if len(items) == 1:
            return hashlib.sha256(b"\x00" + items[0]).digest()
        half = len(items) // 2
        return hashlib.sha256(b"\x01" + tree(items[:half]) + tree(items[half:])).digest()

    peaks, start, n = [], 0, len(leaves)
    for bit in reversed(range(n.bit_length())):
        if n >> bit & 1:
            peaks.append(tree(leaves[start : start + (1 << bit)]))
            start += 1 << bit
    if not peaks:
        return hashlib.sha256(b"").hexdigest()
    bag = peaks[-1]
    for peak in reversed(peaks[:-1]):
        bag = hashlib.sha256(b"\x01" + peak + bag).digest()
    return bag.hex()


def test_leaf_is_le32_nonce_then_vector():
    assert leaf_bytes(0x01020304, b"\xaa\xbb") == b"\x04\x03\x02\x01\xaa\xbb"
    assert leaf_bytes(7, b"") == struct.pack("<I", 7)
    with pytest.raises(ValueError, match="nonce"):
        leaf_bytes(2**32, b"")


def test_peak_layout_follows_binary_digits():
    assert peak_layout(0) == []
    assert peak_layout(1) == [(0, 0)]
    assert peak_layout(7) == [(0, 2), (4, 1), (6, 0)]
    assert peak_layout(12) == [(0, 3), (8, 2)]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 5, 8, 13, 31, 64])
def test_root_matches_reference_definition(count):
    artifacts = [_artifact(n) for n in range(count)]
    mmr = build_mmr(artifacts)
    leaves = [leaf_bytes(a.nonce, a.vector_bytes()) for a in artifacts]
    assert mmr.count == count
    assert mmr.root() == _reference_root(leaves)
    if count == 0:
        assert mmr.root() == EMPTY_ROOT


def test_every_leaf_proves_for_many_counts():
    for count in range(1, 34):
        artifacts = [_artifact(n) for n in range(count)]
        mmr = build_mmr(artifacts)
        for index in range(count):
            proof = mmr.proof(index, artifacts[index])
            assert verify_proof(proof, mmr.root(), count) is None, (count, index)


def test_appending_keeps_earlier_roots_reproducible():
    mmr = MerkleMountainRange()
    roots = []
    for n in range(20):
        mmr.append(leaf_bytes(n, b"x"))
        roots.append(mmr.root())
    assert len(set(roots)) == 20
    assert build_mmr([]).root() == EMPTY_ROOT


def _proof_fixture():
    artifacts = [_artifact(n) for n in range(11)]
    mmr = build_mmr(artifacts)
    return artifacts, mmr, mmr.proof(5, artifacts[5])


def test_tampered_vector_fails_its_proof():
    _, mmr, proof = _proof_fixture()
    changed = proof.model_copy(update={"artifact": _artifact(5).model_copy(update={"vector_b64": "AAAA" * 8})})
    assert "does not hash to its peak" in verify_proof(changed, mmr.root(), mmr.count)


def test_tampered_nonce_fails_its_proof():
    _, mmr, proof = _proof_fixture()
    changed = proof.model_copy(update={"artifact": proof.artifact.model_copy(update={"nonce": 99})})
    assert verify_proof(changed, mmr.root(), mmr.count) is not None


def test_tampered_sibling_peak_index_or_count_fail():
    _, mmr, proof = _proof_fixture()
    siblings = list(proof.siblings)
    siblings[0] = "00" * 32
    assert verify_proof(proof.model_copy(update={"siblings": siblings}), mmr.root(), mmr.count) is not None
    peaks = list(proof.peaks)
    peaks[-1] = "11" * 32
    assert "bag" in verify_proof(proof.model_copy(update={"peaks": peaks}), mmr.root(), mmr.count)
    assert verify_proof(proof.model_copy(update={"leaf_index": 4}), mmr.root(), mmr.count) is not None
    assert verify_proof(proof, mmr.root(), mmr.count + 1) is not None
    assert verify_proof(proof, "22" * 32, mmr.count) is not None
    assert "outside" in verify_proof(proof.model_copy(update={"leaf_index": 11}), mmr.root(), mmr.count)


def test_proof_refuses_a_foreign_artifact_and_bad_index():
    artifacts, mmr, _ = _proof_fixture()
    with pytest.raises(ValueError, match="not leaf"):
        mmr.proof(3, artifacts[4])
    with pytest.raises(IndexError):
        mmr.proof(11, artifacts[0])


def test_proof_model_refuses_malformed_hashes():
    with pytest.raises(ValueError):
        PocProof(leaf_index=0, artifact=_artifact(0), siblings=["xyz"], peaks=[])
