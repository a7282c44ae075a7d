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
