import math
from pathlib import Path

import pytest
import torch

from ditproof.errors import InvalidInputError
from ditproof.hashing import atomic_write_bytes, canonical_json, sha256_json, sha256_tensor


def test_canonical_json_sorts_keys_and_is_compact():
    assert canonical_json({"b": 1, "a": [1.5, None, True]}) == b'{"a":[1.5,null,true],"b":1}'
    assert sha256_json({"a": 1, "b": 2}) == sha256_json({"b": 2, "a": 1})


@pytest.mark.parametrize("bad", [math.nan, math.inf, {1: "int key"}, {"x": object()}, {"s": {1, 2}}])
def test_canonical_json_refuses_what_it_cannot_hash_exactly(bad):
    with pytest.raises((TypeError, ValueError)):
        canonical_json(bad)


def test_tensor_hash_covers_bfloat16_and_values():
    x = torch.arange(6, dtype=torch.float32)
    assert sha256_tensor(x) != sha256_tensor(x + 1)
    assert sha256_tensor(x.to(torch.bfloat16)) != sha256_tensor(x)


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_atomic_write_to_a_folder_is_refused_and_leaves_it_untouched(tmp_path: Path):
    (tmp_path / "kept.txt").write_text("stored")
    for target in (tmp_path, ""):
        with pytest.raises(InvalidInputError, match="it is a folder; allowed: a file path"):
            atomic_write_bytes(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path: Path):
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    plain = tmp_path / "plain.json"
    plain.write_bytes(b"x")
    target = tmp_path / "atomic.json"
    atomic_write_bytes(target, b"x")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask
