"""Thresholds files, explicit thresholds, the validator registry, and the validate command."""

from __future__ import annotations

import json

import pytest

from ditproof.cli.main import main
from ditproof.errors import InvalidInputError
from ditproof.generation.execute import execute
from ditproof.protocol.options import VideoEncoding
from ditproof.protocol.request import GenerationRequest
from ditproof.validation.delegation import ValidatorRegistry
from ditproof.validation.policy import ThresholdPolicy, ThresholdsFile, parse_threshold

REV = "ab" * 32
CLASS = "cpu-x86_64/diffusers-0.42.1/torch-2.13.0/sdpa/float32/rev-abababababababab/UniPC-1"
PROV = {"calibration": "unit-test", "fpr_target": 0.01, "date": "2026-11-27"}


def entry(**kw):
    base = {
        "model": "wan-tiny-random",
        "runtime_class": "cpu-*",
        "metric": "psnr",
        "statistic": "worst",
        "direction": "higher-is-better",
        "value": 30.0,
        "provenance": PROV,
    }
    return {**base, **kw}


def thresholds(*entries, provisional=False):
    return ThresholdsFile.model_validate(
        {"version": 2, "provisional": provisional, "description": "test", "entries": list(entries)}
    )


def test_most_specific_entry_wins_and_explicit_overrides():
    file = thresholds(
        entry(value=30.0),
        entry(runtime_class=CLASS, value=31.0),
        entry(model=REV, value=32.0, runtime_class="cpu-*"),
        entry(model="other-model", runtime_class=CLASS, value=99.0),
        entry(metric="latent_rel_l2", statistic="value", direction="lower-is-better", value=0.01),
        entry(runtime_class="cuda-*", metric="ssim", value=0.9),
    )
    found = ThresholdPolicy(file, file_label="t.json").thresholds_for("wan-tiny-random", REV, CLASS)
    assert set(found) == {"psnr:worst", "latent_rel_l2:value"}
    assert found["psnr:worst"].value == 32.0  # revision beats preset, even with a pattern class
    assert "thresholds t.json v2: unit-test, FPR target 0.01, 2026-11-27" in found["psnr:worst"].source
    assert found["latent_rel_l2:value"].passes(0.01) and not found["latent_rel_l2:value"].passes(0.02)
    assert found["psnr:worst"].passes(32.0) and not found["psnr:worst"].passes(31.9)
    overridden = ThresholdPolicy(file, {"psnr": 40.0}).thresholds_for("wan-tiny-random", REV, CLASS)
    assert overridden["psnr:worst"].value == 40.0 and overridden["psnr:worst"].source == "explicit --threshold"
    other = ThresholdPolicy(file).thresholds_for("wan-tiny-random", "cd" * 32, CLASS)
    assert other["psnr:worst"].value == 31.0  # exact class beats a pattern at equal model rank


def segment(value, **position):
    return entry(
        metric="latent_rel_l2_segment",
        statistic="value",
        direction="lower-is-better",
        value=value,
        **({"position": position} if position else {}),
    )


def test_trajectory_thresholds_are_looked_up_by_phase_and_fraction():
    file = thresholds(
        segment(1e-3),  # everywhere
        segment(1e-4, phase="high-noise"),
        segment(5e-5, phase="low-noise", start=0.0, end=0.5),
        segment(2e-4, phase="any", start=0.9, end=1.0),
        segment(7e-5, phase="low-noise", start=0.0, end=0.5) | {"runtime_class": CLASS},
    )
    policy = ThresholdPolicy(file, file_label="t.json")
    at = lambda phase, fraction, cls="cpu-other": policy.trajectory_threshold(  # noqa: E731
        "wan-tiny-random", REV, cls, "latent_rel_l2_segment", phase, fraction
    )
    assert at("high-noise", 0.3).value == 1e-4  # a named phase beats the whole-trajectory entry
    assert at("high-noise", 0.95).value == 2e-4  # the narrowest range wins
    assert at("low-noise", 0.5).value == 5e-5 and "position low-noise 0-0.5" in at("low-noise", 0.5).source
    assert at("low-noise", 0.7).value == 1e-3  # only the entry without a position holds there
    assert at("low-noise", 0.2, CLASS).value == 7e-5  # an exact class beats a pattern first
    # Positioned entries are not whole-trajectory thresholds; an explicit value overrides every position.
    assert policy.thresholds_for("wan-tiny-random", REV, "cpu-other")["latent_rel_l2_segment:value"].value == 1e-3
    explicit = ThresholdPolicy(file, {"latent_rel_l2_segment": 3e-3})
    assert (
        explicit.trajectory_threshold("wan-tiny-random", REV, "cpu-x", "latent_rel_l2_segment", "low-noise", 0.2).value
        == 3e-3
    )
    assert policy.has_trajectory_thresholds("wan-tiny-random", REV, "cpu-x", "latent_rel_l2_segment")
    assert not policy.has_trajectory_thresholds("wan-tiny-random", REV, "cpu-x", "fingerprint_rel_l2")


def test_positions_need_a_trajectory_metric_and_schema_2(tmp_path):
    with pytest.raises(ValueError, match="position of psnr: a frame or final-latent metric holds for the whole video"):
        thresholds(entry(position={"phase": "low-noise"}))
    with pytest.raises(ValueError, match="start 0.8 after end 0.2"):
        thresholds(segment(1e-4, start=0.8, end=0.2))
    with pytest.raises(ValueError, match="duplicate entry .* position low-noise 0-1"):
        thresholds(segment(1e-4, phase="low-noise"), segment(2e-4, phase="low-noise"))
    thresholds(segment(1e-4, phase="low-noise"), segment(2e-4, phase="high-noise"))  # distinct positions
    old = {"schema_version": "ditproof.thresholds/1", "version": 1, "provisional": True, "description": "old"}
    (tmp_path / "v1.json").write_text(json.dumps({**old, "entries": [segment(1e-4)]}))
    assert ThresholdsFile.load(tmp_path / "v1.json").entries[0].position is None  # /1 files still read
    (tmp_path / "bad.json").write_text(json.dumps({**old, "entries": [segment(1e-4, phase="low-noise")]}))
    with pytest.raises(
        InvalidInputError, match="not in a ditproof.thresholds/1 file; allowed: schema ditproof.thresholds/2"
    ):
        ThresholdsFile.load(tmp_path / "bad.json")


def test_a_threshold_holds_for_the_class_pair_it_was_calibrated_on():
    """An entry naming a validator class applies only to a policy bound to a matching validator
    class; the exact validator class before a pattern before any validator."""
    file = thresholds(
        entry(value=30.0),  # any validator
        entry(validator_class="cpu-*", value=33.0),
        entry(validator_class="cpu-x86_64/avx512-1threads/x", value=34.0),
        entry(metric="ssim", validator_class="cuda-sm90/*", value=0.9),
    )
    unbound = ThresholdPolicy(file)
    assert unbound.thresholds_for("wan-tiny-random", REV, CLASS)["psnr:worst"].value == 30.0
    assert "ssim:worst" not in unbound.thresholds_for("wan-tiny-random", REV, CLASS)
    cpu = unbound.bound_to("cpu-x86_64/avx512-2threads/x")
    assert cpu.thresholds_for("wan-tiny-random", REV, CLASS)["psnr:worst"].value == 33.0
    assert "ssim:worst" not in cpu.thresholds_for("wan-tiny-random", REV, CLASS)
    one_thread = unbound.bound_to("cpu-x86_64/avx512-1threads/x")
    assert one_thread.thresholds_for("wan-tiny-random", REV, CLASS)["psnr:worst"].value == 34.0
    gpu = ThresholdPolicy(file, {"lpips_alex": 0.1}).bound_to("cuda-sm90/132sms/x")
    found = gpu.thresholds_for("wan-tiny-random", REV, CLASS)
    assert found["psnr:worst"].value == 30.0 and found["ssim:worst"].value == 0.9
    assert found["lpips_alex:worst"].source == "explicit --threshold"  # explicit values survive binding
    # Only the ditproof.thresholds/3 schema names validator classes.
    with pytest.raises(ValueError, match="validator_class: not in a ditproof.thresholds/2 file"):
        ThresholdsFile.model_validate(
            {"schema_version": "ditproof.thresholds/2", "version": 1, "provisional": False, "description": "",
             "entries": [entry(validator_class="cpu-*")]}
        )  # fmt: skip
    # Two entries differing only in their validator class are not duplicates.
    thresholds(entry(validator_class="cpu-*"), entry(validator_class="cuda-*"))


def test_thresholds_file_is_checked(tmp_path):
    with pytest.raises(ValueError, match="direction of psnr: got 'lower-is-better'"):
        thresholds(entry(direction="lower-is-better"))
    with pytest.raises(ValueError, match="statistic of psnr: got 'p95'; allowed: mean, worst, p05"):
        thresholds(entry(statistic="p95"))
    with pytest.raises(ValueError, match="duplicate entry"):
        thresholds(entry(), entry(value=3.0))
    with pytest.raises(ValueError, match="metric_weights.vgg16"):
        thresholds(entry(metric="dists", direction="lower-is-better", metric_weights={"vgg16": "xyz"}))
    path = tmp_path / "t.json"
    thresholds(entry(), provisional=True).save(path)
    assert ThresholdsFile.load(path).provisional
    data = json.loads(path.read_text())
    data["schema_version"] = "ditproof.thresholds/9"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match=r"not a valid ditproof.thresholds/3 \(or /2, /1\) file"):
        ThresholdsFile.load(path)
    with pytest.raises(InvalidInputError, match="cannot be read"):
        ThresholdsFile.load(tmp_path / "missing.json")


def test_parse_threshold_defaults_and_errors():
    assert parse_threshold("lpips_alex=0.05") == ("lpips_alex:worst", 0.05)
    assert parse_threshold("ssim:mean=0.9") == ("ssim:mean", 0.9)
    assert parse_threshold("latent_rel_l2=1e-3") == ("latent_rel_l2:value", 0.001)
    for bad, message in [
        ("lpips_alex", "allowed: METRIC"),
        ("lpips=0.1", "metric: got 'lpips'"),
        ("ssim=high", "allowed: a number"),
        ("ssim=nan", "finite"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            parse_threshold(bad)


def test_registry_file(tmp_path):
    path = tmp_path / "validators.json"
    path.write_text(json.dumps({"nodes": [{"id": "a", "url": "ftp://x", "runtime_classes": ["*"]}]}))
    with pytest.raises(InvalidInputError, match=r"not a valid ditproof.validators/1 file .*nodes.0.url"):
        ValidatorRegistry.load(path)
    node = {"id": "a", "url": "http://a:1", "runtime_classes": ["cpu-*"], "models": [REV]}
    path.write_text(json.dumps({"nodes": [node, node]}))
    with pytest.raises(InvalidInputError, match="duplicate node ids"):
        ValidatorRegistry.load(path)
    path.write_text(json.dumps({"nodes": [node]}))
    registry = ValidatorRegistry.load(path)
    assert [n.id for n in registry.nodes_for(CLASS, "wan-tiny-random", REV)] == ["a"]
    assert registry.nodes_for(CLASS, "wan-tiny-random", "cd" * 32) == []


@pytest.fixture(scope="module")
def lossless_run(tmp_path_factory, tiny_model, cpu_options):
    out = tmp_path_factory.mktemp("cli-run")
    request = GenerationRequest(prompt="a red kite", width=64, height=48, num_frames=5, num_inference_steps=4)
    options = cpu_options.model_copy(update={"encoding": VideoEncoding(codec="h264-lossless")})
    record = execute(request, tiny_model, options, out, request_id="cli-1", entropy="c3" * 32)
    return record, out


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(["validate", *args])
    return int(info.value.code or 0)


def test_validate_command_exit_codes(lossless_run, tmp_path, capsys):
    _, out = lossless_run
    args = ["--record", str(out / "record.json"), "--cfg-mode", "batched"]
    verdict_path = tmp_path / "v.json"
    assert (
        run_cli(*args, "--threshold", "psnr=35", "--threshold", "latent_rel_l2=1e-3", "--verdict", str(verdict_path))
        == 0
    )
    printed = capsys.readouterr().out
    assert "psnr:worst" in printed and "(threshold 35)" in printed and "verdict: valid" in printed
    verdict = json.loads(verdict_path.read_text())
    assert verdict["decision"] == "valid" and verdict["thresholds"] == {
        "latent_rel_l2:value": 0.001,
        "psnr:worst": 35.0,
    }
    # No threshold: the validator refuses to decide (exit 3).
    assert run_cli(*args) == 3
    assert "refuses to decide" in capsys.readouterr().out
    # An impossible threshold: invalid (exit 1).
    assert run_cli(*args, "--threshold", "psnr:mean=250") == 1
    # Bad input: exit 2 with the field named.
    assert run_cli(*args, "--threshold", "psnr=abc") == 2
    assert "allowed: a number" in capsys.readouterr().err
    assert run_cli("--record", str(out / "record.json"), "--cfg-mode", "sideways") == 2
    assert run_cli(*args, "--thresholds", str(tmp_path / "none.json")) == 2


def test_validate_command_delegates(lossless_run, tmp_path, capsys, declare, gpu_class):
    record, out = lossless_run
    forged = declare(record, {"device": "cuda"}, **gpu_class)
    folder = tmp_path / "forged"
    folder.mkdir()
    forged.save(folder / "record.json")
    (folder / "video.mp4").write_bytes((out / "video.mp4").read_bytes())
    registry = tmp_path / "validators.json"
    registry.write_text(
        json.dumps({"nodes": [{"id": "h1", "url": "https://h1:9", "runtime_classes": ["cuda-sm90/*"]}]})
    )
    assert run_cli("--record", str(folder / "record.json"), "--validators", str(registry)) == 4
    printed = capsys.readouterr().out
    assert "delegate to: https://h1:9" in printed and "verdict: delegate" in printed


def test_shipped_provisional_thresholds_apply_to_the_tiny_model_on_cpu(lossless_run, tmp_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "results" / "thresholds" / "wan-tiny-random.provisional.json"
    record, out = lossless_run
    file = ThresholdsFile.load(path)
    assert file.provisional and all(e.provenance.fpr_target is None for e in file.entries)
    found = ThresholdPolicy(file).thresholds_for(record.model.preset, record.model.revision, record.runtime_class)
    assert set(found) == {"psnr:worst", "latent_rel_l2:value"}
    assert found["psnr:worst"].source.startswith("provisional thresholds")
    # Trajectory thresholds per expert phase, for any step count.
    at = ThresholdPolicy(file).trajectory_threshold
    where = (record.model.preset, record.model.revision, record.runtime_class)
    assert at(*where, "fingerprint_rel_l2", "low-noise", 0.5).value == 5.25e-05
    assert at(*where, "latent_rel_l2_segment", "high-noise", 1.0).value == 2.48e-05
    assert run_cli("--record", str(out / "record.json"), "--cfg-mode", "batched", "--thresholds", str(path)) == 0


def test_a_record_naming_a_video_outside_its_folder_is_refused(lossless_run, tmp_path, capsys):
    # The validator opens record.video.file beside the record: a path there could read any file.
    import json as _json

    record, _ = lossless_run
    data = _json.loads(record.canonical())
    data["video"]["file"] = "../../../../etc/passwd"
    (tmp_path / "record.json").write_text(_json.dumps(data))
    assert run_cli("--record", str(tmp_path / "record.json")) == 2
    printed = capsys.readouterr()
    assert "video.file" in printed.out + printed.err and "Traceback" not in printed.out + printed.err
