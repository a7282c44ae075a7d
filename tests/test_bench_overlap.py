"""bench/decode_encode_overlap.py on the CPU (the shipped model's VAE, a small size): the serial and
the side-by-side decode and encode, with the byte check it prints on a GPU host."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_side_by_side_decode_and_encode_give_the_serial_bytes(tmp_path):
    out = tmp_path / "overlap.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(ROOT / "bench" / "decode_encode_overlap.py"), "--vae", "shipped", "--device", "cpu"]
    command += ["--sizes", "64x64x9", "--encode-threads", "2", "--repeats", "1", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["bytes_equal"] is True and row["frames"] == 9
    assert row["serial_s"] > 0 and row["overlapped_s"] > 0
    assert "bytes equal" in run.stdout
