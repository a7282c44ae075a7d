"""The caption grammar, the held-out split and the seeded synthetic clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditproof.errors import InvalidInputError
from ditproof.training.components import build_grammar_tokenizer
from ditproof.training.flow import expert_u_range, sample_sigmas, shift_sigma
from ditproof.training.grammar import (
    DIRECTIONS,
    ObjectSpec,
    SceneSpec,
    combinations,
    grammar_words,
    is_held_out,
    parse_caption,
    scene_allowed,
)
from ditproof.training.synthetic import render_clips, sample_clip, sample_scene, to_uint8_frames


def test_captions_round_trip_through_the_parser():
    rng = np.random.default_rng([1, 2])
    for _ in range(200):
        scene = sample_scene(rng, "train")
        assert parse_caption(scene.caption()) == scene
    two = SceneSpec((ObjectSpec("star", "green", "up and right"), ObjectSpec("ring", "white", "down")), "black")
    assert two.caption() == "a green star moves up and right and a white ring moves down on a black background"
    assert parse_caption("A  Red circle moves LEFT on a blue background").objects[0].color == "red"


@pytest.mark.parametrize(
    "text",
    [
        "a red circle jumps left on a blue background",
        "a red blob moves left on a blue background",
        "a red circle moves left on a teal background",
        "a red circle moves sideways on a blue background",
        "",
    ],
)
def test_parser_names_what_is_wrong(text):
    with pytest.raises(InvalidInputError, match="prompt"):
        parse_caption(text)


def test_every_caption_word_is_in_the_tokenizer_vocabulary():
    tokenizer = build_grammar_tokenizer()
    unk = tokenizer.unk_token_id
    rng = np.random.default_rng(3)
    for _ in range(100):
        ids = tokenizer(sample_scene(rng, "train").caption())["input_ids"]
        assert unk not in ids and ids[-1] == tokenizer.eos_token_id
    assert len(tokenizer) == 3 + len(grammar_words())
    assert tokenizer("a dog moves left")["input_ids"][1] == unk


def test_held_out_split_is_disjoint_and_never_drawn_for_training():
    held = combinations("heldout")
    train = combinations("train")
    assert not set(held) & set(train)
    assert 0.07 < len(held) / (len(held) + len(train)) < 0.13
    rng = np.random.default_rng(4)
    for _ in range(500):
        scene = sample_scene(rng, "train")
        assert not any(is_held_out(o, scene.background) for o in scene.objects)
        assert scene_allowed(scene, "train")
    assert all(scene_allowed(SceneSpec((o,), bg), "heldout") for o, bg in held[:50])


def test_clips_are_reproducible_per_index_and_stay_in_frame():
    a = sample_clip(9, 17, "train", 128, 96, 17)
    assert a == sample_clip(9, 17, "train", 128, 96, 17)
    assert a != sample_clip(9, 18, "train", 128, 96, 17)
    for index in range(100):
        clip = sample_clip(9, index, "train", 128, 96, 17)
        for obj, m in zip(clip.scene.objects, clip.motions, strict=True):
            for t in (0, 16):
                x, y = m.x0 + m.vx * t, m.y0 + m.vy * t
                assert m.radius <= x <= 128 - m.radius and m.radius <= y <= 96 - m.radius
            dx, dy = DIRECTIONS[obj.direction]
            speed = (m.vx**2 + m.vy**2) ** 0.5
            assert abs(m.vx - dx * speed) < 1e-9 and abs(m.vy - dy * speed) < 1e-9


def test_render_paints_the_object_colour_on_the_background():
    clip = sample_clip(0, 0, "heldout", 64, 64, 5, scene=parse_caption("a red square moves right on a blue background"))
    video = render_clips([clip])
    assert video.shape == (1, 3, 5, 64, 64) and video.min() >= -1 and video.max() <= 1
    frames = to_uint8_frames(video[0])
    m = clip.motions[0]
    centre = frames[0, round(m.y0), round(m.x0)]
    assert tuple(centre) == (220, 40, 40)
    assert tuple(frames[0, 0, 0]) == (40, 70, 220)
    assert np.array_equal(frames, to_uint8_frames(render_clips([clip])[0]))


def test_sigmas_stay_in_each_experts_range():
    generator = torch.Generator().manual_seed(0)
    high = sample_sigmas(2000, "high", 12.0, 0.875, generator, torch.device("cpu"))
    low = sample_sigmas(2000, "low", 12.0, 0.875, generator, torch.device("cpu"))
    assert high.min() >= 0.875 - 1e-6 and high.max() <= 1.0
    assert low.max() < 0.875 and low.min() >= 0.0
    u_low, u_high = expert_u_range("high", 12.0, 0.875)
    assert abs(shift_sigma(u_low, 12.0) - 0.875) < 1e-9 and u_high == 1.0
    with pytest.raises(InvalidInputError, match="expert"):
        expert_u_range("middle", 12.0, 0.875)


def test_step_plan_fits_the_time_budget():
    from ditproof.training.common import StepPlan

    plan = StepPlan(None, 100.0, calibrate_at=4, warm_from=2)
    for done, elapsed in ((1, 5.0), (2, 6.0), (3, 7.0), (4, 8.0)):
        plan.observe(done, elapsed)
    assert plan.total == 4 + 92  # one second per step after the warm-up, 92 seconds left
    assert not plan.over_time(100.0) and plan.over_time(121.0)
    fixed = StepPlan(10, 5.0)
    fixed.observe(4, 8.0)
    assert fixed.total == 10 and fixed.over_time(6.0)
