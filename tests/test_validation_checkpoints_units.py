"""Pieces of the checkpoint modes that need no model run: spot-check choice, fingerprint locator,
checkpoint-list structure and solver-state distance."""

import math

import pytest
import torch

from ditproof.errors import InvalidInputError
from ditproof.generation.solver_state import SolverState
from ditproof.protocol.options import CheckpointSchedule
from ditproof.randomness import seeded_sample, spot_check_phase_segments, spot_check_segments
from ditproof.validation.fingerprints import fingerprint_distance, first_divergent_step
from ditproof.validation.segments import solver_distance
from ditproof.validation.trajectory import step_position

RECORD_HASH = "ab" * 32


def test_spot_choice_is_deterministic_sorted_and_distinct():
    first = spot_check_segments(RECORD_HASH, "01" * 16, 10, 3)
    assert first == spot_check_segments(RECORD_HASH, "01" * 16, 10, 3)
    assert first == sorted(set(first)) and len(first) == 3 and all(0 <= i < 10 for i in first)
    # Entropy is read case-insensitively (it is hex), so the two spellings choose alike.
    assert spot_check_segments(RECORD_HASH, "AB" * 16, 10, 3) == spot_check_segments(RECORD_HASH, "ab" * 16, 10, 3)
    # The documented derivation.
    assert first == sorted(seeded_sample(f"ditproof-spot-v1/{RECORD_HASH}/{'01' * 16}", 10, 3))


def test_spot_choice_changes_with_validator_entropy_and_with_the_record():
    choices = {tuple(spot_check_segments(RECORD_HASH, f"{i:032x}", 20, 2)) for i in range(40)}
    assert len(choices) > 20  # 190 possible pairs; 40 draws collide rarely
    by_record = {tuple(spot_check_segments(f"{i:064x}", "01" * 16, 20, 2)) for i in range(40)}
    assert len(by_record) > 20


def test_spot_choice_covers_every_segment_about_evenly():
    counts = [0] * 5
    for i in range(500):
        for j in spot_check_segments(RECORD_HASH, f"{i:032x}", 5, 1):
            counts[j] += 1
    assert min(counts) > 60 and max(counts) < 140  # expected 100 each


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ab", "01" * 16, 4, 1), "record_sha256: got 'ab'; allowed: 64 lower-case hex digits"),
        ((RECORD_HASH, "xyz", 4, 1), "entropy: got 'xyz'"),
        ((RECORD_HASH, "01" * 16, 4, 5), r"got k=5 of 4 segment\(s\); allowed: 1 to 4"),
        ((RECORD_HASH, "01" * 16, 4, 0), r"got k=0 of 4 segment\(s\); allowed: 1 to 4"),
        ((RECORD_HASH, "01" * 16, 0, 1), r"got 0 segment\(s\) to choose from"),
    ],
)
def test_spot_choice_refuses_bad_input(args, message):
    with pytest.raises(InvalidInputError, match=message):
        spot_check_segments(*args)


def test_per_phase_choice_draws_k_in_each_phase():
    # 5 high-noise segments (0-4) and 3 low-noise ones (5-7), as the default schedule at 40 steps.
    for i in range(50):
        chosen = spot_check_phase_segments(RECORD_HASH, f"{i:032x}", [5, 3], 1)
        assert len(chosen) == 2 and chosen[0] < 5 <= chosen[1]
    two = spot_check_phase_segments(RECORD_HASH, "01" * 16, [5, 3], 2)
    assert two == spot_check_phase_segments(RECORD_HASH, "01" * 16, [5, 3], 2) and len(two) == 4
    # The documented derivation, phase by phase (offsets added).
    high = seeded_sample(f"ditproof-spot-v2/{RECORD_HASH}/{'01' * 16}/0", 5, 2)
    low = seeded_sample(f"ditproof-spot-v2/{RECORD_HASH}/{'01' * 16}/1", 3, 2)
    assert two == sorted([*high, *(5 + j for j in low)])
    # A phase with k or fewer segments is checked whole; an empty phase is skipped.
    assert spot_check_phase_segments(RECORD_HASH, "01" * 16, [5, 3], 3)[3:] == [5, 6, 7]
    assert spot_check_phase_segments(RECORD_HASH, "01" * 16, [0, 2], 3) == [0, 1]
    with pytest.raises(InvalidInputError, match="got k=0 per phase; allowed: 1 or more"):
        spot_check_phase_segments(RECORD_HASH, "01" * 16, [5, 3], 0)
    with pytest.raises(InvalidInputError, match=r"got \[0, 0\] segment\(s\) per phase"):
        spot_check_phase_segments(RECORD_HASH, "01" * 16, [0, 0], 1)


def test_a_deviation_confined_to_one_phase_never_escapes_a_per_phase_draw():
    # Every low-noise segment bad (a step cache after the switch): a uniform draw of 1 of 8 misses
    # it with probability 5/8; one per phase never does.
    uniform_misses = sum(all(j < 5 for j in spot_check_segments(RECORD_HASH, f"{i:032x}", 8, 1)) for i in range(400))
    assert 200 < uniform_misses < 300  # expected 250
    assert all(any(j >= 5 for j in spot_check_phase_segments(RECORD_HASH, f"{i:032x}", [5, 3], 1)) for i in range(400))


@pytest.mark.parametrize(
    ("steps", "switch", "expected"),
    [
        (40, 26, (0, 5, 10, 16, 21, 26, 31, 35, 40)),
        (20, 13, (0, 3, 5, 8, 10, 13, 15, 18, 20)),
        (40, 17, (0, 6, 11, 17, 22, 26, 31, 35, 40)),
        (8, 6, tuple(range(9))),
        (40, None, (0, 5, 10, 15, 20, 25, 30, 35, 40)),
        (3, None, (0, 1, 2, 3)),
    ],
)
def test_default_schedule_steps(steps, switch, expected):
    assert CheckpointSchedule().steps(steps, switch) == expected


def test_every_schedule_covers_both_phases_and_the_switch():
    for segments in (1, 2, 4, 8, 16):
        for steps in range(2, 61):
            for switch in range(1, steps):
                points = CheckpointSchedule(segments=segments).steps(steps, switch)
                assert points[0] == 0 and points[-1] == steps and switch in points
                assert points == tuple(sorted(set(points)))
                low = [p for p in points if p > switch]
                assert low and any(0 < p <= switch for p in points)  # at least one segment per phase
                assert len(points) - 1 <= max(segments, 2) + 1  # about `segments` segments, never many more


def test_step_positions():
    assert step_position(26, 40, 26) == ("high-noise", 1.0)
    assert step_position(31, 40, 26) == ("low-noise", 5 / 14)
    assert step_position(10, 40, None) == ("high-noise", 0.25)
    assert step_position(4, 8, 0) == ("low-noise", 0.5)


def test_fingerprint_distance():
    assert fingerprint_distance([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert fingerprint_distance([3.0, 4.0], [0.0, 0.0]) == math.inf
    assert fingerprint_distance([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert fingerprint_distance([1.0], [1.0, 2.0]) == math.inf
    assert fingerprint_distance([float("nan"), 1.0], [1.0, 1.0]) == math.inf
    assert fingerprint_distance([3.0, 4.0], [3.0, 4.5]) == pytest.approx(0.5 / math.hypot(3.0, 4.5))


def test_first_divergent_step_names_the_first_step_beyond_tolerance():
    recorded = [[1.0, 0.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]
    same = [list(v) for v in recorded]
    assert first_divergent_step(recorded, same, 0.0) is None
    off = [list(v) for v in recorded]
    off[2] = [2.0, 1.01]
    off[3] = [9.0, 9.0]
    found = first_divergent_step(recorded, off, 1e-3)
    assert found is not None and found.step == 3 and found.distance == pytest.approx(0.01 / math.hypot(2, 1.01))
    assert "first diverge after step 3" in found.describe()
    # A looser tolerance skips the small deviation and finds the large one.
    assert first_divergent_step(recorded, off, 0.05).step == 4
    # A segment resumed after 2 steps: its first value is step 3.
    assert first_divergent_step(recorded, off[2:], 1e-3, first_step=3).step == 3
    # Steps the record lacks diverge.
    assert first_divergent_step(recorded[:2], same, 1e-3).step == 3


@pytest.mark.parametrize(("tolerance", "first"), [(-1.0, 1), (float("nan"), 1), (0.1, 0)])
def test_first_divergent_step_refuses_bad_arguments(tolerance, first):
    with pytest.raises(InvalidInputError):
        first_divergent_step([[1.0]], [[1.0]], tolerance, first)


def _state(scale: float = 1.0, step: int = 3) -> SolverState:
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(2, 3, generator=gen)
    return SolverState(step, 2, 2, [out * scale, out + 1], [900, 800], out - 1)


def test_solver_distance():
    exact, rel, _ = solver_distance(_state(), _state())
    assert exact and rel == 0.0
    exact, rel, note = solver_distance(_state(1.01), _state())
    assert not exact and 0.0 < rel < 0.02 and "relative L2" in note
    exact, rel, note = solver_distance(_state(step=4), _state())
    assert not exact and rel is None and "step_index 4" in note
    hollow = _state()
    hollow.model_outputs[0] = None
    exact, rel, note = solver_distance(hollow, _state())
    assert not exact and rel is None and "another structure" in note
