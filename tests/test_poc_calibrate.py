"""Calibration in parts (ditproof.poc.calibrate): runs over contiguous nonce ranges merge into what
one run over the whole range gives, exactly (tiny model, CPU float32); parts of different
calibrations are refused."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ditproof.cli.main import app
from ditproof.errors import InvalidInputError
from ditproof.poc.calibrate import CalibrationSettings, RuntimeSpec, calibrate
from ditproof.poc.calibration_data import merge_calibrations, rederive, stored_distances
from ditproof.protocol.poc import NonceDistances, PocCalibration, PocParams, PolicyTargets

PARAMS = PocParams(latent_frames=1, latent_height=16, latent_width=16, text_len=32)
TARGETS = PolicyTargets(cheat_fraction=0.5, detection=0.9)
COMPARED = ("nonces", "first_nonce", "comparisons", "distances", "reference_vectors", "derivation", "proposed")
COMPARED += ("cheats", "honest_max", "honest_mismatches", "honest_checked", "critical_mismatches", "warnings")


def _run(model, first: int, count: int) -> PocCalibration:
    # Batch sizes divide the part size, so every batch holds the same nonces in both ways of running.
    return calibrate(
        RuntimeSpec("cpu float32 batch 16", "honest", model, 16),
        [RuntimeSpec("cpu float32 batch 4", "honest", model, 4)],
        PARAMS,
        CalibrationSettings(nonces=count, first_nonce=first, targets=TARGETS),
    )


@pytest.fixture(scope="module")
def runs(tiny_model):
    return {"whole": _run(tiny_model, 0, 64), "a": _run(tiny_model, 0, 32), "b": _run(tiny_model, 32, 32)}


def _same(one: PocCalibration, other: PocCalibration) -> None:
    for key in COMPARED:
        assert getattr(one, key) == getattr(other, key), key


def test_two_halves_merge_into_the_whole_run(runs):
    whole, a, b = runs["whole"], runs["a"], runs["b"]
    assert (a.first_nonce, a.nonces, b.first_nonce, b.nonces) == (0, 32, 32, 32)
    for merged in (merge_calibrations([a, b]), merge_calibrations([b, a])):  # any order
        _same(merged, whole)
        assert merged.model == whole.model and merged.device == whole.device
    # The halves are different nonces: their distances are the whole run's, half each.
    assert whole.distances[0].values == a.distances[0].values + b.distances[0].values


def test_one_file_derives_again_what_it_holds(runs):
    whole = runs["whole"]
    _same(merge_calibrations([whole]), whole)
    assert rederive(whole, TARGETS) == whole.derivation
    other = merge_calibrations([whole], PolicyTargets(detection=0.5))
    assert other.derivation is not None and other.derivation.targets.detection == 0.5
    assert other.distances == whole.distances and other.comparisons == whole.comparisons


def test_a_non_finite_distance_reads_back_as_infinite():
    entry = NonceDistances(name="x", kind="honest", reference="r", values=[0.1, 2.0, 0.3], non_finite=[1])
    assert stored_distances(entry).tolist() == [0.1, np.inf, 0.3]
    with pytest.raises(InvalidInputError, match="non_finite: got index 3"):
        stored_distances(entry.model_copy(update={"non_finite": [3]}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"block_hash": "ff" * 32}, "block_hash"),
        ({"public_key": "another"}, "public_key"),
        ({"params": PARAMS.model_copy(update={"text_len": 16})}, "params"),
        ({"model_revision": "other"}, "model_revision"),
        ({"first_nonce": 16}, "overlaps"),
        ({"first_nonce": 40}, "leaves a gap"),
        ({"distances": []}, "no per-nonce distances"),
    ],
)
def test_parts_of_different_calibrations_are_refused(runs, change, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        merge_calibrations([runs["a"], runs["b"].model_copy(update=change)])
    assert "allowed:" in str(info.value)


def test_parts_with_other_runtimes_are_refused(runs):
    b = runs["b"]
    renamed = [d.model_copy(update={"name": "cuda"}) if i == 0 else d for i, d in enumerate(b.distances)]
    with pytest.raises(InvalidInputError, match="runtimes"):
        merge_calibrations([runs["a"], b.model_copy(update={"distances": renamed})])
    with pytest.raises(InvalidInputError, match="overlaps"):
        merge_calibrations([runs["a"], runs["a"]])


def test_cli_merges_parts_and_reads_a_tool_result(runs, tmp_path):
    runner = CliRunner()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    runs["a"].save(a)
    # tools/poc_calibrate.py writes the main calibration under "main" → "calibration".
    b.write_text(json.dumps({"device": {}, "main": {"calibration": runs["b"].model_dump(mode="json")}}))
    merged, policy = tmp_path / "merged.json", tmp_path / "policy.json"
    targets = ["--cheat-fraction", "0.5", "--detection", "0.9"]
    args = ["poc", "calibrate", "--from", str(a), "--from", str(b), *targets]
    result = runner.invoke(app, [*args, "--out", str(merged), "--policy-out", str(policy)])
    assert result.exit_code == 0, result.output
    _same(PocCalibration.model_validate_json(merged.read_bytes()), runs["whole"])
    assert json.loads(policy.read_text()) == runs["whole"].proposed.gonka_form()

    bad = runs["b"].model_copy(update={"block_hash": "ff" * 32})
    (tmp_path / "bad.json").write_text(bad.model_dump_json())
    for extra, message in [
        (["--from", str(tmp_path / "bad.json")], "block_hash"),
        (["--from", str(a)], "overlaps"),
        (["--from", str(tmp_path / "missing.json")], "--from: cannot read"),
        (["--from", str(b), "--key", "tiny"], "--key: got 'tiny'"),
    ]:
        refused = runner.invoke(app, ["poc", "calibrate", "--from", str(a), *extra])
        assert refused.exit_code == 2 and message in refused.output, refused.output
        assert "Traceback" not in refused.output


# A runtime measured later against a calibration (another card or configuration) joins it as one
# more honest runtime, and gives what a run that had it from the start gives.


def _later_run(calibration: PocCalibration, model, batch_size: int, name: str):
    from ditproof.poc.calibration_data import runtime_run
    from ditproof.poc.compute import PocModel, compute_vectors

    nonces = list(range(calibration.first_nonce, calibration.first_nonce + calibration.nonces))
    vectors = compute_vectors(
        PocModel.from_loaded(model), calibration.params, calibration.block_hash, calibration.public_key, nonces,
        batch_size,
    )  # fmt: skip
    return runtime_run(
        calibration, name, vectors.astype(np.float32), created="2026-12-06T00:00:00+00:00", device="cpu",
        torch_version="x", configuration={"batch_size": batch_size},
    )  # fmt: skip


def test_a_runtime_measured_later_joins_as_if_run_with_the_calibration(runs, tiny_model):
    from ditproof.poc.calibration_data import with_runtimes

    whole = runs["whole"]
    with_batch_1 = calibrate(
        RuntimeSpec("cpu float32 batch 16", "honest", tiny_model, 16),
        [RuntimeSpec("cpu float32 batch 4", "honest", tiny_model, 4), RuntimeSpec("b1", "honest", tiny_model, 1)],
        PARAMS,
        CalibrationSettings(nonces=64, first_nonce=0, targets=TARGETS),
    )
    later = _later_run(whole, tiny_model, 1, "b1")
    assert later.distances.reference == "cpu float32 batch 16"
    joined = with_runtimes(whole, [later])
    for key in ("derivation", "proposed", "cheats", "honest_max", "reference_vectors"):
        assert getattr(joined, key) == getattr(with_batch_1, key), key
    for key in ("distances", "comparisons"):  # the same entries; the later runtime comes last
        assert sorted(getattr(joined, key), key=lambda e: e.name) == sorted(
            getattr(with_batch_1, key), key=lambda e: e.name
        ), key
    assert joined.derivation is not None and "b1" in joined.derivation.honest_runtimes


def test_a_runtime_that_does_not_fit_the_calibration_is_refused(runs, tiny_model):
    from ditproof.poc.calibration_data import with_runtimes

    whole = runs["whole"]
    later = _later_run(whole, tiny_model, 1, "b1")
    short = later.distances.model_copy(update={"values": later.distances.values[:10]})
    cheat = later.distances.model_copy(update={"kind": "cheat"})
    for run, message in [
        (later.model_copy(update={"block_hash": "ff" * 32}), "block_hash"),
        (later.model_copy(update={"first_nonce": 32}), "first_nonce"),
        (later.model_copy(update={"distances": short}), "10 distances"),
        (later.model_copy(update={"distances": cheat}), "a cheat runtime"),
        (later.model_copy(update={"distances": later.distances.model_copy(update={"name": "cpu float32 batch 4"})}),
         "already in the calibration"),
    ]:  # fmt: skip
        with pytest.raises(InvalidInputError, match=message) as info:
            with_runtimes(whole, [run])
        assert "allowed:" in str(info.value)


def test_cli_adds_a_runtime_measured_later(runs, tiny_model, tmp_path):
    whole, runner = runs["whole"], CliRunner()
    cal, run_file, joined = tmp_path / "cal.json", tmp_path / "b1.json", tmp_path / "joined.json"
    whole.save(cal)
    _later_run(whole, tiny_model, 1, "b1").save(run_file)
    targets = ["--cheat-fraction", "0.5", "--detection", "0.9"]
    result = runner.invoke(app, ["poc", "calibrate", "--from", str(cal), "--honest", str(run_file), *targets,
                                 "--out", str(joined)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "b1" in PocCalibration.model_validate_json(joined.read_bytes()).derivation.honest_runtimes
    (tmp_path / "bad.json").write_text('{"schema_version": "ditproof.poc-runtime/1"}')
    for args, message in [
        (["--honest", str(run_file)], "--honest: got it without --from"),
        (["--from", str(cal), "--honest", str(tmp_path / "bad.json")], "is not a PoC runtime file"),
        (["--from", str(cal), "--honest", str(tmp_path / "missing.json")], "--honest: cannot read"),
    ]:
        refused = runner.invoke(app, ["poc", "calibrate", *args])
        assert refused.exit_code == 2 and message in refused.output, refused.output
        assert "Traceback" not in refused.output


def test_the_gpu_tool_measures_a_runtime_against_a_calibration_on_the_cpu(runs, tmp_path):
    """tools/poc_calibrate.py --honest-against (run on another card in practice), here on the CPU:
    the runtime file it writes joins the calibration; another card's weights are refused."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cal, out = tmp_path / "cal.json", tmp_path / "b1.json"
    runs["whole"].save(cal)
    command = [sys.executable, str(root / "tools" / "poc_calibrate.py"), "--honest-against", str(cal),
               "--name", "cpu float32 batch 1 (tool)", "--device", "cpu", "--dtype", "float32", "--batch-size", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "cpu float32 batch 1 (tool): 64 nonces" in done.stdout and "policy: dist_threshold" in done.stdout
    result = CliRunner().invoke(app, ["poc", "calibrate", "--from", str(cal), "--honest", str(out)])
    assert result.exit_code == 0 and "cpu float32 batch 1 (tool)" in result.output, result.output
    refused = subprocess.run(
        [*command, "--out", str(tmp_path / "x.json"), "--expect-weights", "0" * 64],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert refused.returncode != 0 and "random weights differ" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "x.json").exists()
