"""``ditproof price``: quote, refusals, calibrate → quote with the new file, import, next.

One test runs the installed entry point in a subprocess (the command is registered); the others
run the same typer app in-process, which saves a Python start-up (torch, diffusers) per call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

from typer.testing import CliRunner

from ditproof.cli.main import app


def ditproof(*args: str) -> SimpleNamespace:
    result = CliRunner().invoke(app, ["price", *args])
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def test_quote_json_of_the_default_request():
    completed = subprocess.run(
        [sys.executable, "-m", "ditproof.cli.main", "price", "--json", "--price-per-unit", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = completed
    assert result.returncode == 0, result.stderr
    quote = json.loads(result.stdout)
    assert quote["schema_version"] == "ditproof.price-quote/1"
    assert (quote["width"], quote["height"], quote["num_frames"], quote["num_inference_steps"]) == (832, 480, 81, 40)
    assert quote["patches"] == 32_760 and quote["forward_passes"] == 80 and quote["cfg"] is True
    assert quote["cost"] == 3 * quote["units"]


def test_refusals_name_field_value_and_what_is_allowed():
    bad_width = ditproof("--width", "830")
    assert bad_width.returncode == 2
    assert "width: got 830; allowed: a multiple of 16" in bad_width.stderr
    assert "Traceback" not in bad_width.stderr
    too_big = ditproof("--width", "1280", "--height", "720", "--num-frames", "121")
    assert too_big.returncode == 2 and "allowed: at most 75,600 patches" in too_big.stderr


def test_calibrate_then_quote_with_the_new_file_then_import(tmp_path):
    path = tmp_path / "coefficients.json"
    calibrated = ditproof(
        "calibrate", "--out", str(path), "--sizes", "16x16x1,64x48x5,128x96x9", "--repeats", "1", "--layers", "1"
    )
    assert calibrated.returncode == 0, calibrated.stderr
    assert "timed 1 of 2 layers and scaled linearly" in calibrated.stdout
    entry = json.loads(path.read_text())["entries"][0]
    quoted = ditproof(
        "--model",
        "wan-tiny-random",
        "--coefficients",
        str(path),
        "--width",
        "64",
        "--height",
        "48",
        "--num-frames",
        "5",
        "--steps",
        "4",
        "--no-cfg",
        "--json",
    )
    assert quoted.returncode == 0, quoted.stderr
    quote = json.loads(quoted.stdout)
    assert quote["gpu"] == entry["gpu"] and quote["forward_passes"] == 4 and quote["cfg"] is False

    # A bench result wraps the entry; import merges it into another file.
    result = tmp_path / "bench.json"
    result.write_text(json.dumps({"gpu": entry["gpu"], "entry": entry}))
    target = tmp_path / "merged.json"
    imported = ditproof("import", str(result), "--into", str(target))
    assert imported.returncode == 0, imported.stderr
    assert json.loads(target.read_text())["entries"] == [entry]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"entry": {"gpu": "x"}}))
    refused = ditproof("import", str(broken), "--into", str(target))
    assert refused.returncode == 2 and "holds no valid coefficient entry" in refused.stderr


def test_next_price_block_by_block():
    result = ditproof("next", "--price", "1000", "--utilization", "1.0,1.0,0.5,0.0")
    assert result.returncode == 0, result.stderr
    for price in ("1,020", "1,040", "1,019"):
        assert price in result.stdout
    refused = ditproof("next", "--utilization", "0.5,-1")
    assert refused.returncode == 2 and "utilization: got -1; allowed" in refused.stderr


def test_the_shipped_default_model_is_priced_at_its_own_size():
    # `generate`'s default model had no coefficients: `price --model wan-shapes-small` was refused.
    result = ditproof("--model", "wan-shapes-small", "--json")
    assert result.returncode == 0, result.stderr
    quote = json.loads(result.stdout)
    assert (quote["width"], quote["height"], quote["num_frames"], quote["num_inference_steps"]) == (128, 128, 17, 20)
    assert quote["patches"] == 320 and quote["forward_passes"] == 40
    assert quote["gpu"].startswith("cpu:") and quote["units"] > 0
    # A flag still wins over the model's own size; sizes past the calibrated sweep are refused.
    wider = json.loads(ditproof("--model", "wan-shapes-small", "--width", "256", "--json").stdout)
    assert (wider["width"], wider["height"]) == (256, 128) and wider["units"] > quote["units"]
    too_big = ditproof("--model", "wan-shapes-small", "--width", "832", "--height", "480", "--num-frames", "81")
    assert too_big.returncode == 2 and "allowed: at most 2,304 patches" in too_big.stderr


def test_a_model_without_coefficients_is_told_how_to_get_some():
    result = ditproof("--model", "wan-tiny-random")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no pricing coefficients; allowed: wan-a14b-shape, wan-shapes-small, wan2.2-t2v-a14b" in result.stderr
    assert "ditproof price calibrate" in result.stderr and "--coefficients FILE" in result.stderr


def test_calibration_times_the_shipped_models_architecture():
    # The priced expert has the shipped weights' parameter names and shapes (no weights loaded).
    from safetensors import safe_open

    from ditproof.models.shipped import SHIPPED_DIR
    from ditproof.pricing.calibrate import build_expert

    expert = build_expert("wan-shapes-small", layers=None)
    built = {name: tuple(p.shape) for name, p in expert.state_dict().items()}
    shipped = {}
    for path in sorted((SHIPPED_DIR / "transformer").glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            shipped.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})  # noqa: SIM118
    assert built == shipped
