"""Calibration on the CPU with the tiny model: build, time, fit, write, read back, quote."""

from __future__ import annotations

import json

import pytest
import torch

from ditproof.errors import InvalidInputError
from ditproof.pricing.calibrate import build_expert, calibrate, parse_size, time_forward
from ditproof.pricing.coefficients import dump_coefficients, load_coefficients, merge_entry, write_entry
from ditproof.pricing.cost import quote, size_request
from ditproof.protocol.pricing import CoefficientsFile
from test_pricing_support import synthetic_entry

SIZES = ["16x16x1", "64x48x5", "128x96x9", "128x128x17"]


@pytest.fixture(scope="module")
def tiny_entry():
    return calibrate("wan-tiny-random", device="cpu", sizes=SIZES, warmup=1, repeats=2)


def test_expert_is_built_like_the_preset(tiny_model):
    # The meta-device builder gives the very weights of the tiny preset's high-noise expert.
    built = build_expert("wan-tiny-random", "cpu", "float32")
    reference = tiny_model.pipeline.transformer.state_dict()
    state = built.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert len(build_expert("wan-tiny-random", layers=1).blocks) == 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_time_forward_returns_positive_times(dtype):
    # bfloat16 as on a GPU: the parameters kept in float32 must not decide the input dtype.
    expert = build_expert("wan-tiny-random", dtype=dtype, layers=1)
    samples = time_forward(expert, parse_size("64x48x5"), text_tokens=64, warmup=0, repeats=3)
    assert len(samples) == 3 and all(t > 0 for t in samples)


def test_calibration_entry(tiny_entry):
    entry = tiny_entry
    assert entry.status == "calibrated" and entry.models == ("wan-tiny-random",)
    assert entry.gpu.startswith("cpu:") and entry.hardware.device_type == "cpu"
    assert entry.method.timer == "perf_counter" and entry.method.scaling == "none"
    assert entry.max_patches == 8 * 8 * 5  # 128x128x17: 5 latent frames × (128/16)²
    high, low = entry.experts["transformer"], entry.experts["transformer_2"]
    assert low.timed_as == "transformer" and low.cost == high.cost and low.points == ()
    assert [p.size for p in high.points] == SIZES
    assert [p.patches for p in high.points] == [1, 24, 144, 320]
    assert all(len(p.samples) == 2 and p.seconds > 0 for p in high.points)
    assert high.fit.max_rel_error == max(abs(p.rel_error) for p in high.points)
    # Each form contains the next: floored ⊇ three-term ⊇ two-term, so none is worse than the next.
    assert high.fit.rms_rel_error <= high.three_term_fit.rms_rel_error + 1e-12
    assert high.three_term_fit.rms_rel_error <= high.two_term_fit.rms_rel_error + 1e-12
    assert high.three_term.floor == 0.0 and high.two_term.gamma == 0.0


def test_subset_of_layers_is_scaled_and_said(tmp_path):
    entry = calibrate("wan-tiny-random", sizes=SIZES[:3], layers=1, warmup=0, repeats=1)
    assert entry.method.layers_timed == 1 and entry.method.layers_total == 2
    assert entry.method.scaling == "linear-in-layers"
    point = entry.experts["transformer"].points[0]
    assert point.seconds == pytest.approx(point.samples[0] * 2)


def test_written_file_round_trips_and_prices(tiny_entry, tmp_path):
    path = tmp_path / "coefficients.json"
    write_entry(path, synthetic_entry(models=("wan-tiny-random",), gpu="Other GPU"))
    write_entry(path, tiny_entry)
    data = load_coefficients(path)
    assert [e.gpu for e in data.entries] == ["Other GPU", tiny_entry.gpu]
    assert data.entries[1] == tiny_entry
    assert path.read_text() == dump_coefficients(data)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file of the atomic write is gone
    q = quote(size_request(64, 48, 5, 4), "wan-tiny-random", gpu=tiny_entry.gpu, coefficients=data)
    assert q.units >= 8 and q.seconds > 0  # 8 passes, each at least one unit

    # Writing again replaces the entry of the same model and GPU instead of adding one.
    write_entry(path, tiny_entry.model_copy(update={"provenance": "again"}))
    again = load_coefficients(path)
    assert len(again.entries) == 2 and again.entries[1].provenance == "again"


def test_merge_keeps_other_models_and_gpus():
    a = synthetic_entry(models=("m1",), gpu="G1")
    b = synthetic_entry(models=("m2",), gpu="G1")
    c = synthetic_entry(models=("m1",), gpu="G2")
    merged = merge_entry(CoefficientsFile(entries=(a, b, c)), a.model_copy(update={"provenance": "new"}))
    assert [(e.models, e.gpu, e.provenance) for e in merged.entries] == [
        (("m2",), "G1", "tests"),
        (("m1",), "G2", "tests"),
        (("m1",), "G1", "new"),
    ]


def test_bad_files_and_arguments(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": "ditproof.pricing-coefficients/1", "entries": [{"gpu": "x"}]}))
    with pytest.raises(InvalidInputError, match="does not follow the coefficients schema"):
        load_coefficients(bad)
    bad.write_text("{not json")
    with pytest.raises(InvalidInputError, match="is not valid JSON"):
        load_coefficients(bad)
    with pytest.raises(InvalidInputError, match="sizes: got '64x48'"):
        parse_size("64x48")
    with pytest.raises(InvalidInputError, match="width: got 65"):
        parse_size("65x48x5")
    with pytest.raises(InvalidInputError, match="at least 3"):
        calibrate("wan-tiny-random", sizes=["64x48x5", "64x48x5", "16x16x1"], repeats=1)
    with pytest.raises(InvalidInputError, match="model: got 'nope'"):
        calibrate("nope")
    with pytest.raises(InvalidInputError, match="layers: got 9"):
        build_expert("wan-tiny-random", layers=9)


def test_sizes_below_fit_min_patches_are_reported_but_not_fitted() -> None:
    from ditproof.pricing.calibrate import fit_expert

    patches = [1, 390, 1950, 8190, 32760, 75600]
    # A quadratic cost, except the launch-bound N = 1, timed slower than N = 390.
    seconds = [0.0711] + [0.04 + 6e-5 * n + 1.4e-9 * n * n for n in patches[1:]]
    samples = [[t, t] for t in seconds]
    sizes = [f"s{n}" for n in patches]
    fitted = fit_expert("transformer", sizes, patches, samples, 1.0, fit_min_patches=300)
    assert fitted.fit_min_patches == 300
    assert fitted.fit.max_rel_error < 0.01 and fitted.fit.worst_patches >= 390
    assert fitted.points[0].rel_error < -0.3  # N = 1 is reported with its (large) error
    everything = fit_expert("transformer", sizes, patches, samples, 1.0)
    assert everything.fit.max_rel_error > fitted.fit.max_rel_error
    with pytest.raises(InvalidInputError, match="fit_min_patches"):
        fit_expert("transformer", sizes, patches, samples, 1.0, fit_min_patches=30000)
