"""The shipped model: in the package, the default, within its size budget, following prompts."""

from __future__ import annotations

import json

from ditproof.cli.generate import DEFAULT_MODEL
from ditproof.cli.validate import DEMO_SIZE
from ditproof.evaluation.heldout import heldout_prompts, run_model
from ditproof.models.registry import load_model
from ditproof.models.shipped import DEMO_REQUEST, SHIPPED_DIR, SHIPPED_NAME, SHIPPED_ROOT
from ditproof.protocol.options import LoadOptions, RunOptions
from ditproof.validation.policy import DEFAULT_THRESHOLDS, ThresholdPolicy

MAX_BYTES = 40_000_000  # the shipped model's weights stay at most 40 MB


def test_shipped_weights_are_in_the_package_and_within_budget() -> None:
    weights = sorted(SHIPPED_DIR.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"text_encoder", "transformer", "transformer_2", "vae"}
    assert sum(w.stat().st_size for w in weights) <= MAX_BYTES
    for name in ("MODEL_CARD.md", "eval.json", "contact_sheet.png", "loss_curves.png", "training.json"):
        assert (SHIPPED_ROOT / name).is_file(), name


def test_it_is_the_default_model_and_the_demo_runs_at_its_training_size() -> None:
    assert DEFAULT_MODEL == SHIPPED_NAME
    assert DEMO_SIZE == DEMO_REQUEST
    from ditproof.models.registry import PRESETS

    assert dict(PRESETS[SHIPPED_NAME].native_request) == DEMO_REQUEST


def test_card_reports_the_measured_adherence() -> None:
    evaluation = json.loads((SHIPPED_ROOT / "eval.json").read_text())
    model, random = evaluation["summary"]["model"], evaluation["summary"]["random_weights"]
    assert evaluation["prompts"] >= 100
    assert model["color_accuracy"] >= 0.9 and model["direction_accuracy"] >= 0.8
    assert random["color_accuracy"] < 0.3 and random["direction_accuracy"] < 0.3
    card = (SHIPPED_ROOT / "MODEL_CARD.md").read_text()
    assert f"| `{SHIPPED_NAME}` | {model['color_accuracy']:.0%} | {model['direction_accuracy']:.0%} |" in card


def test_held_out_prompts_come_out_in_the_named_colour_and_direction() -> None:
    # Two prompts the model never saw, generated as the evaluation does (CPU, training size).
    loaded = load_model(SHIPPED_NAME, LoadOptions())
    results = run_model(loaded, heldout_prompts(2), dict(DEMO_REQUEST), RunOptions())
    for item in results:
        obj = item.score.objects[0]
        assert obj.color and obj.direction, (item.prompt, obj)


def test_default_thresholds_are_the_stage1_gpu_runs_for_this_model() -> None:
    policy = ThresholdPolicy.from_cli(None, [])
    assert policy.file is not None and policy.file_label == "default (shipped model)"
    loaded = load_model(SHIPPED_NAME, LoadOptions())
    entries = policy.file.entries
    assert entries and {e.model for e in entries} == {loaded.revision}
    gpu_class = entries[0].runtime_class
    # Each entry holds for the pair of classes it was calibrated on: on the GPU, the Stage 1
    # reference as the validator; a validator of another class finds no threshold.
    validator = policy.bound_to(entries[0].validator_class)
    chosen = validator.thresholds_for(SHIPPED_NAME, loaded.revision, gpu_class)
    assert {"psnr:mean", "latent_rel_l2:value"} <= set(chosen)
    assert validator.thresholds_for("wan-tiny-random", "0" * 64, gpu_class) == {}
    assert policy.thresholds_for(SHIPPED_NAME, loaded.revision, gpu_class) == {}  # validator class unknown
    cpu_validator = policy.bound_to("cpu-x86_64/avx512-2threads/x")
    assert not any(
        t.metric == "psnr" for t in cpu_validator.thresholds_for(SHIPPED_NAME, loaded.revision, gpu_class).values()
    )
    assert DEFAULT_THRESHOLDS.is_file()


def test_cpu_thresholds_name_their_calibrated_pairs_and_refuse_others() -> None:
    # The CPU entries come from the CPU Stage 1 calibration (`ditproof experiment install-thresholds`):
    # each names an executor class and a validator class, both with a thread count and kernel;
    # a pair no pool measured (another kernel as the validator) has no threshold at all.
    policy = ThresholdPolicy.from_cli(None, [])
    assert policy.file is not None
    revision = load_model(SHIPPED_NAME, LoadOptions()).revision
    entries = policy.file.entries
    cpu = [e for e in entries if e.runtime_class.startswith("cpu-") and (e.validator_class or "").startswith("cpu-")]
    assert cpu and all(e.provenance.fpr_target == 0.01 and "stage1-v2-cpu" in e.provenance.calibration for e in cpu)
    # A CPU validator of a GPU executor (and the mirror) is the GPU run's pool, calibrated there.
    across = [e for e in entries if {e.runtime_class[:4], (e.validator_class or "")[:4]} == {"cpu-", "cuda"}]
    assert across and all("stage1-v2-gpu" in e.provenance.calibration for e in across)
    assert all(e.validator_class.startswith("cpu-") and "*" not in e.validator_class.split("/", 2)[2] for e in cpu)
    metrics = {e.metric for e in cpu}
    assert {"latent_rel_l2", "latent_rel_l2_checkpoint", "latent_rel_l2_segment"} <= metrics
    two = next(
        e.validator_class
        for e in cpu
        if "/sdpa/cfg-sequential" in e.validator_class and "2threads" in e.validator_class
    )
    one = two.replace("-2threads/", "-1threads/", 1)
    # Both directions of the thread-count pair decide on the final latent and the trajectory.
    for executor, validator in ((one, two), (two, one)):
        bound = policy.bound_to(validator.replace("*", "avx512", 1))
        assert "latent_rel_l2:value" in bound.thresholds_for(SHIPPED_NAME, revision, executor.replace("*", "avx2", 1))
        assert bound.trajectory_threshold(
            SHIPPED_NAME, revision, executor.replace("*", "avx512", 1), "latent_rel_l2_segment", "low-noise", 0.5
        )
    math_validator = policy.bound_to(two.replace("/sdpa/", "/sdpa-math/", 1))
    assert math_validator.thresholds_for(SHIPPED_NAME, revision, one) == {}
