"""``ditproof validate --mode checkpoints|spot-check`` and the default ``auto`` (in process, on the tiny model)."""

import json

import pytest

from ditproof.cli.main import main
from ditproof.generation.execute import execute
from ditproof.protocol.options import CaptureOptions, RuntimeOptions
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.request import GenerationRequest
from ditproof.validation import choose_spot_segments

THRESHOLDS = ["--threshold", "psnr=35", "--threshold", "latent_rel_l2_segment=1e-4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("cli-ckpt")
    request = GenerationRequest(
        prompt="a white square moves right", width=64, height=48, num_frames=5, num_inference_steps=6
    )
    options = RuntimeOptions(capture=CaptureOptions(checkpoint_steps=(3,)))
    execute(request, tiny_model, options, out, request_id="cli-ckpt-1", entropy="2f" * 32)
    return out


def validate_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(["validate", *args])
    return int(info.value.code or 0)


def test_spot_check_command_prints_choice_segments_and_cost(run, tmp_path, capsys):
    record = InferenceRecord.load(run / "record.json")
    entropy = "0badc0de" * 4
    chosen = choose_spot_segments(record, entropy, 1)
    verdict_path = tmp_path / "v.json"
    code = validate_cli(
        "--record", str(run / "record.json"), "--mode", "spot-check", "--spot-segments", "1",
        "--validator-entropy", entropy, "--verdict", str(verdict_path), *THRESHOLDS,
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"segments {chosen} of" in printed and "mode: spot-check" in printed and "verdict: valid" in printed
    assert "% of a full regeneration" in printed
    saved = json.loads(verdict_path.read_text())
    assert saved["schema_version"] == "ditproof.verdict/3" and saved["mode"] == "spot-check"
    assert saved["spot_check"]["chosen"] == chosen and saved["spot_check"]["validator_entropy"] == entropy


def test_checkpoints_command_exits_1_on_a_tampered_checkpoint_and_3_without_files(run, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save

    from ditproof.hashing import sha256_bytes, sha256_tensor

    folder = tmp_path / "forged"
    shutil.copytree(run, folder)
    record = InferenceRecord.load(run / "record.json")
    files = load_file(str(run / "latents" / "step_003.safetensors"))
    files["latent"] = files["latent"] * 0.99
    data = save(files)
    (folder / "latents" / "step_003.safetensors").write_bytes(data)
    refs = [
        r.model_copy(update={"sha256": sha256_bytes(data), "tensor_sha256": sha256_tensor(files["latent"])})
        if r.name == "step_003"
        else r
        for r in record.checkpoints
    ]
    # The forger keeps its fingerprints consistent (the projection of its latent is cheap to
    # compute): only the segments can tell.
    import torch

    from ditproof.randomness import jl_projection

    flat = files["latent"].to(torch.float64).reshape(-1)
    projection = jl_projection(record.seed, flat.numel(), record.fingerprints.dim).to(torch.float64)
    values = list(record.fingerprints.values)
    values[2] = [float(v) for v in (projection @ flat).to(torch.float32)]
    prints = record.fingerprints.model_copy(update={"values": values})
    record.model_copy(update={"checkpoints": refs, "fingerprints": prints}).save(folder / "record.json")
    code = validate_cli("--record", str(folder / "record.json"), "--mode", "checkpoints", *THRESHOLDS)
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert "FAIL step_003 (3) → " not in printed and "FAIL step_002 (2) → step_003 (3)" in printed

    shutil.rmtree(folder / "latents")
    assert validate_cli("--record", str(folder / "record.json"), "--mode", "checkpoints", *THRESHOLDS) == 3
    assert "missing in" in capsys.readouterr().out


def test_without_a_mode_the_command_runs_auto(run, tmp_path, capsys):
    record = str(run / "record.json")
    verdict_path = tmp_path / "v.json"
    # The executor's class: auto runs the full regeneration and says why.
    code = validate_cli("--record", record, "--verdict", str(verdict_path))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "ok mode: full: the executor's class" in printed and "verdict: valid" in printed
    saved = json.loads(verdict_path.read_text())
    chosen = [c for c in saved["checks"] if c["name"] == "mode"]
    assert saved["mode"] == "full"
    assert len(chosen) == 1 and chosen[0]["detail"].startswith("full: the executor's class")
    # Another class with segment thresholds and every checkpoint file at hand: the checkpoints mode.
    assert validate_cli("--record", record, "--cfg-mode", "batched", "--verdict", str(verdict_path), *THRESHOLDS) == 0
    saved = json.loads(verdict_path.read_text())
    assert saved["mode"] == "checkpoints" and saved["segments"], saved["reason"]
    # --mode full stays: no choice made, no mode check.
    assert validate_cli("--record", record, "--mode", "full", "--verdict", str(verdict_path)) == 0
    saved = json.loads(verdict_path.read_text())
    assert saved["mode"] == "full" and "mode" not in [c["name"] for c in saved["checks"]]
    capsys.readouterr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "partial"], "mode: got 'partial'; allowed: full, checkpoints, spot-check, auto"),
        (["--mode", "spot-check", "--spot-segments", "0"], "got k=0 per phase; allowed: 1 or more"),
        (["--validator-entropy", "00" * 16], "only with --mode spot-check"),
        (["--mode", "spot-check", "--validator-entropy", "zz"], "entropy: got 'zz'"),
    ],
)
def test_bad_mode_options_exit_2(run, capsys, args, message):
    assert validate_cli("--record", str(run / "record.json"), *args) == 2
    assert message in capsys.readouterr().err
