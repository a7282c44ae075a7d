"""The prompt-adherence evaluator on the renderer's own clips (near 100%) and on random weights (low)."""

from __future__ import annotations

import numpy as np
import pytest

from ditproof.errors import InvalidInputError
from ditproof.evaluation import evaluate, measure_video, summarize
from ditproof.evaluation.heldout import heldout_prompts, run_ground_truth, run_model
from ditproof.evaluation.sheet import contact_sheet
from ditproof.protocol.options import RunOptions, VideoEncoding
from ditproof.training.grammar import combinations, parse_caption
from ditproof.training.synthetic import render_clips, sample_clip, to_uint8_frames
from ditproof.video import decode_video, encode_video


def _frames(prompt: str, index: int = 0, size: tuple[int, int, int] = (96, 96, 17)) -> np.ndarray:
    clip = sample_clip(3, index, "heldout", *size, scene=parse_caption(prompt))
    return to_uint8_frames(render_clips([clip])[0])


def test_ground_truth_clips_score_full_marks():
    prompts = heldout_prompts(24)
    summary = summarize([g.score for g in run_ground_truth(prompts, 96, 96, 17)])
    assert summary["color_accuracy"] == 1.0
    assert summary["direction_accuracy"] == 1.0
    assert summary["background_accuracy"] == 1.0
    assert summary["shape_accuracy"] >= 0.95


def test_two_object_clips_and_mp4_round_trip():
    prompt = "a yellow triangle moves up and left and a cyan ring moves down on a brown background"
    frames = _frames(prompt, size=(128, 128, 17))
    decoded = decode_video(encode_video(frames, 16, VideoEncoding()))
    for video in (frames, decoded):
        score = evaluate(prompt, video)
        assert all(o.color and o.direction for o in score.objects), score
        assert score.background


def test_wrong_prompt_is_caught_on_each_attribute():
    frames = _frames("a green star moves right on a black background")
    for wrong, attribute in (
        ("a red star moves right on a black background", "color"),
        ("a green star moves left on a black background", "direction"),
        ("a green square moves right on a black background", "shape"),
    ):
        obj = evaluate(wrong, frames).objects[0]
        assert not getattr(obj, attribute)
    assert not evaluate("a green star moves right on a white background", frames).background


def test_still_or_empty_video_has_no_direction():
    frames = _frames("a pink circle moves up on a gray background")
    still = np.repeat(frames[:1], len(frames), axis=0)
    assert measure_video(still).objects[0].direction == "none"
    empty = np.full_like(frames, 128)
    measured = measure_video(empty)
    assert measured.objects == () and measured.background == "gray"
    assert not evaluate("a pink circle moves up on a gray background", empty).objects[0].color


def test_bad_frames_are_refused():
    with pytest.raises(InvalidInputError, match="frames"):
        measure_video(np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="num_objects"):
        measure_video(np.zeros((4, 8, 8, 3), dtype=np.uint8), num_objects=3)
    with pytest.raises(InvalidInputError, match="count"):
        heldout_prompts(len(combinations("heldout")) + 1)


def test_heldout_prompts_are_fixed_and_held_out():
    prompts = heldout_prompts(10)
    assert prompts == heldout_prompts(10)
    held = {(o.shape, o.color, o.direction, bg) for o, bg in combinations("heldout")}
    for prompt in prompts:
        scene = parse_caption(prompt)
        o = scene.objects[0]
        assert (o.shape, o.color, o.direction, scene.background) in held


def test_random_weight_outputs_score_low(tiny_model):
    """The tiny random preset's videos through the one generation path: far from the ground truth."""
    prompts = heldout_prompts(8)
    request = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 3}
    results = run_model(tiny_model, prompts, request, RunOptions())
    summary = summarize([g.score for g in results])
    assert summary["color_accuracy"] <= 0.5
    assert summary["direction_accuracy"] <= 0.5
    png = contact_sheet([(g.prompt, g.frames, g.score) for g in results[:2]], columns=3, title="t")
    assert png.startswith(b"\x89PNG")
