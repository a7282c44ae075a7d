"""The PoC commitment: a Merkle mountain range (MMR) over the artifacts, and inclusion proofs.

Leaves and nodes (as in Gonka PoC v2)::

    leaf       = uint32_le(nonce) ‖ vector bytes (little-endian float16)
    leaf hash  = sha256(0x00 ‖ leaf)
    node hash  = sha256(0x01 ‖ left ‖ right)

An MMR of ``count`` leaves is the list of perfect binary trees given by the binary digits of
``count``, largest first ("peaks"); leaf ``i`` lies in the first peak whose range covers it.
The root bags the peaks from the right: ``bag = peak[-1]``, then ``bag = node(peak[j], bag)``
for ``j`` from the second-to-last down to the first. A node can append leaves while it
computes, without rebuilding anything, and commit ``(root, count)`` at any time. The root of
an empty MMR is ``sha256(b"")``.
"""

from __future__ import annotations

import hashlib
import struct

from ditproof.protocol.poc import MAX_NONCE, PocArtifact, PocProof

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").hexdigest()


def leaf_bytes(nonce: int, vector: bytes) -> bytes:
    """``uint32_le(nonce) ‖ vector``."""
    if not 0 <= nonce <= MAX_NONCE:
        raise ValueError(f"nonce: got {nonce}; allowed: 0 to {MAX_NONCE}")
    return struct.pack("<I", nonce) + vector


def artifact_leaf(artifact: PocArtifact) -> bytes:
    """The leaf of an artifact."""
    return leaf_bytes(artifact.nonce, artifact.vector_bytes())


def hash_leaf(leaf: bytes) -> bytes:
    """``sha256(0x00 ‖ leaf)``."""
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def hash_node(left: bytes, right: bytes) -> bytes:
    """``sha256(0x01 ‖ left ‖ right)``."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def peak_layout(count: int) -> list[tuple[int, int]]:
    """``(first leaf, height)`` of each peak of an MMR of ``count`` leaves, largest first."""
    layout = []
    start = 0
    for height in range(count.bit_length() - 1, -1, -1):
        if count >> height & 1:
            layout.append((start, height))
            start += 1 << height
    return layout


def bag_peaks(peaks: list[bytes]) -> bytes:
    """The root over the peaks (see the module docstring); ``sha256(b"")`` when there are none."""
    if not peaks:
        return hashlib.sha256(b"").digest()
    bag = peaks[-1]
    for peak in reversed(peaks[:-1]):
        bag = hash_node(peak, bag)
    return bag


class MerkleMountainRange:
    """An append-only MMR that keeps every level, so it can prove any leaf.

    ``levels[h][j]`` is the root of the perfect subtree over leaves ``[j·2^h, (j+1)·2^h)``.
    """

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = [[]]

    @property
    def count(self) -> int:
        """Number of leaves."""
        return len(self.levels[0])

    def append(self, leaf: bytes) -> int:
        """Appends one leaf; returns its index."""
        index = self.count
        self.levels[0].append(hash_leaf(leaf))
        height, position = 0, index
        while position & 1:
            # The new node completes a pair: its parent exists now.
            level = self.levels[height]
            parent = hash_node(level[position - 1], level[position])
            if len(self.levels) == height + 1:
                self.levels.append([])
            self.levels[height + 1].append(parent)
            height, position = height + 1, position >> 1
        return index

    def peaks(self) -> list[bytes]:
        """The peak hashes, largest first."""
        return [self.levels[height][start >> height] for start, height in peak_layout(self.count)]

    def root(self) -> str:
        """Hex root (see the module docstring)."""
        return bag_peaks(self.peaks()).hex()

    def proof(self, index: int, artifact: PocArtifact) -> PocProof:
        """The inclusion proof of leaf ``index`` (whose artifact the caller keeps)."""
        if not 0 <= index < self.count:
            raise IndexError(f"leaf_index: got {index}; allowed: 0 to {self.count - 1}")
        if hash_leaf(artifact_leaf(artifact)) != self.levels[0][index]:
            raise ValueError(f"artifact of nonce {artifact.nonce} is not leaf {index} of this MMR")
        start, height = next((s, h) for s, h in peak_layout(self.count) if s <= index < s + (1 << h))
        siblings = []
        position = index
        for level in range(height):
            siblings.append(self.levels[level][position ^ 1].hex())
            position >>= 1
        assert position == start >> height
        return PocProof(
            leaf_index=index, artifact=artifact, siblings=siblings, peaks=[peak.hex() for peak in self.peaks()]
        )


def build_mmr(artifacts: list[PocArtifact]) -> MerkleMountainRange:
    """The MMR of ``artifacts`` in order."""
    mmr = MerkleMountainRange()
    for artifact in artifacts:
        mmr.append(artifact_leaf(artifact))
    return mmr


def verify_proof(proof: PocProof, root: str, count: int) -> str | None:
    """Checks an inclusion proof against a committed ``(root, count)``.

    Returns:
        None when the proof holds, else what is wrong (one line).
    """
    layout = peak_layout(count)
    if not 0 <= proof.leaf_index < count:
        return f"leaf_index {proof.leaf_index} outside 0..{count - 1}"
    if len(proof.peaks) != len(layout):
        return f"{len(proof.peaks)} peaks given; an MMR of {count} leaves has {len(layout)}"
    peak_index, (start, height) = next(
        (j, (s, h)) for j, (s, h) in enumerate(layout) if s <= proof.leaf_index < s + (1 << h)
    )
    if len(proof.siblings) != height:
        return f"{len(proof.siblings)} siblings given; leaf {proof.leaf_index} sits under a peak of height {height}"
    node = hash_leaf(artifact_leaf(proof.artifact))
    position = proof.leaf_index - start
    for sibling_hex in proof.siblings:
        sibling = bytes.fromhex(sibling_hex)
        node = hash_node(sibling, node) if position & 1 else hash_node(node, sibling)
        position >>= 1
    if node.hex() != proof.peaks[peak_index]:
        return f"leaf {proof.leaf_index} does not hash to its peak"
    if bag_peaks([bytes.fromhex(peak) for peak in proof.peaks]).hex() != root:
        return "the peaks do not bag to the committed root"
    return None
