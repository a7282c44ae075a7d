"""bench/multi_gpu.py's CPU smoke: the same launcher, timing, table and byte check as on a GPU host,
with the tiny model under tensor parallelism over gloo (TP-2 with fixed-order FFN slices gives the
bytes of one process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_runs_one_and_two_processes_and_finds_the_bytes_equal(tmp_path):
    out = tmp_path / "multi_gpu.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "multi_gpu.py"), "--smoke", "--gpus", "1,2,4,8,2cfg", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())

    groups = {g["world_size"]: g for g in result["groups"] if not g["cfg_parallel"]}
    assert sorted(groups) == [1, 2, 4, 8]
    (cfg,) = [g for g in result["groups"] if g["cfg_parallel"]]
    assert cfg["world_size"] == 2 and cfg["status"] == "ok"
    assert cfg["options"]["cfg_degree"] == 2 and "tp_degree" in cfg["options"] and cfg["options"]["tp_degree"] == 1
    assert groups[1]["status"] == groups[2]["status"] == "ok"
    assert groups[4]["status"] == groups[8]["status"] == "not run"
    assert groups[2]["options"]["tp_degree"] == 2 and groups[2]["options"]["ffn_chunks"] == 2
    for world in (1, 2):
        (timed,) = groups[world]["runs"]
        assert timed["size"] == "64x48x5" and timed["steps"] == 3 and timed["target_steps"] == 4
        assert len(timed["step_s"]) == 3 and all(s > 0 for s in timed["step_s"])
        for phase in ("text_encode_s", "denoise_s", "vae_decode_s", "encode_s", "whole_s", "whole_target_s"):
            assert timed[phase] > 0, phase
        assert timed["whole_target_s"] > timed["whole_s"]  # 3 steps scaled to 4
        assert len(timed["video_sha256"]) == len(timed["final_latent_sha256"]) == 64
    assert groups[1]["runs"][0]["video_sha256"] == groups[2]["runs"][0]["video_sha256"]
    assert groups[1]["runs"][0]["video_sha256"] == cfg["runs"][0]["video_sha256"]  # CFG-2: one process's bytes

    rows = {(row["gpus"], row["cfg_parallel"]): row for row in result["table"]}
    assert sorted(rows) == [(1, False), (2, False), (2, True)]
    for layout in ((2, False), (2, True)):
        assert rows[layout]["bytes_equal_1gpu"] is True and rows[layout]["video_equal_1gpu"] is True
        assert rows[layout]["speedup"] > 0 and rows[layout]["efficiency"] == rows[layout]["speedup"] / 2
    assert rows[(1, False)]["speedup"] == 1.0
    assert result["time_split_at_largest"]["gpus"] == 2 and result["time_split_at_largest"]["cfg_parallel"] is True
    assert "cfg_parallel" not in result["not_supported"]

    lines = run.stdout.splitlines()
    table = [line.split() for line in lines if line.strip().startswith("64x48x5")]
    assert [row[1] for row in table] == ["1", "2", "2+cfg"] and all(row[-1] == "yes" for row in table)
    assert "4 GPUs: not run: the smoke runs 1 and 2 processes" in lines
    assert any(line.startswith("at 2+cfg GPUs, 64x48x5:") for line in lines)


def load_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("multi_gpu_bench", ROOT / "bench" / "multi_gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bytes_are_compared_only_on_one_host_and_card_names_are_short():
    bench = load_bench()
    run = {
        "size": "832x480x81",
        "steps": 4,
        "target_steps": 40,
        "text_encode_s": 0.5,
        "vae_decode_s": 2.8,
        "encode_s": 4.6,
        "whole_s": 30.0,
        "denoise_target_s": 198.0,
        "whole_target_s": 205.9,
        "video_sha256": "a" * 64,
        "final_latent_sha256": "b" * 64,
    }
    one = {"world_size": 1, "status": "ok", "host": "h1", "device": {"gpu": "NVIDIA H100 80GB HBM3"}, "runs": [run]}
    four_run = {**run, "denoise_target_s": 49.5, "whole_target_s": 57.4}
    four = {**one, "world_size": 4, "runs": [four_run]}
    rows = bench.table_rows([one, four])
    assert rows[1]["bytes_equal_1gpu"] is True and rows[1]["target_s"] == 55.0
    assert rows[1]["official_wan22_s"] == 91.7 and abs(rows[1]["ideal_target_s"] - 57.4) < 1e-9
    elsewhere = bench.table_rows([one, {**four, "host": "h2"}])
    assert elsewhere[1]["bytes_equal_1gpu"] is None and elsewhere[1]["bytes_note"] == "1-GPU run from another host"
    assert bench.card_name({"gpu": "NVIDIA H100 80GB HBM3"}) == "h100"
    assert bench.card_name({"gpu": "NVIDIA H200"}) == "h200"
    assert bench.card_name({"gpu": None}) == "cpu"


def test_cfg_layouts_are_parsed_and_kept_apart_from_context_parallel_ones():
    bench = load_bench()
    assert bench.parse_worlds("1,4,8,4cfg,8cfg") == [(1, False), (4, False), (8, False), (4, True), (8, True)]
    with pytest.raises(SystemExit, match="allowed: N, or Ncfg with N even"):
        bench.parse_worlds("3cfg")
    with pytest.raises(SystemExit, match="got 'four'"):
        bench.parse_worlds("four")
    options = bench.kept_options(8, False, "sdpa-cudnn", cfg=True)
    assert (options.cfg_degree, options.cp_degree, options.tp_degree) == (2, 4, 1)
    assert bench.layout_of({"world_size": 4}) == (4, False)  # results written before CFG parallelism
