"""Compute-saving malign deviations (``RunOptions.shortcut``), run by the experiments and tests.

Each is a way an executor could save compute while claiming the published algorithm: a step cache
that starts only after the expert switch (``low-noise-reuse``), CFG off for the last steps
(``cfg-off-tail``), the unconditional pass reused every other step for the last steps
(``uncond-reuse-tail``), one transformer block skipped in one expert (``skip-block``). The one
generation path (:func:`ditproof.generation.generate.generate`) asks a :class:`ShortcutPlan`, step
by step, what to leave out; without a shortcut the plan leaves out nothing and the path is the
published algorithm.

:func:`compute_saving` states what each saves: the share of the transformer work of a run
(forward passes weighted by the blocks they run), which is nearly all of a generation's compute
(text encoding and the VAE decode are a few percent at 480p, docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ditproof.errors import InvalidInputError
from ditproof.protocol.options import CfgOffTail, LowNoiseReuse, SkipBlock, UncondReuseTail

AnyShortcut = LowNoiseReuse | CfgOffTail | UncondReuseTail | SkipBlock


@dataclass(frozen=True)
class ShortcutPlan:
    """What a shortcut leaves out at each step of a ``total``-step run whose low-noise expert
    starts at step index ``switch`` (None: one phase)."""

    shortcut: AnyShortcut | None
    total: int
    switch: int | None

    def reuses_prediction(self, index: int) -> bool:
        """Step ``index`` (0-based) reuses the previous step's guided velocity: no forward pass."""
        s = self.shortcut
        if not isinstance(s, LowNoiseReuse) or self.switch is None or index < self.switch:
            return False
        return (index - self.switch) % s.every == s.every - 1

    def cfg_off(self, index: int) -> bool:
        """Step ``index`` runs the conditional pass only."""
        return isinstance(self.shortcut, CfgOffTail) and index >= self.total - self.shortcut.steps

    def reuses_uncond(self, index: int) -> bool:
        """Step ``index`` reuses the previous step's unconditional output."""
        s = self.shortcut
        if not isinstance(s, UncondReuseTail):
            return False
        first = max(self.total - s.steps, 0)
        return index > first and (index - first) % 2 == 1

    def skipped_block(self, high_noise: bool) -> int | None:
        """The block index skipped in the expert that runs (None: every block runs)."""
        s = self.shortcut
        if not isinstance(s, SkipBlock) or (s.expert == "high-noise") != high_noise:
            return None
        return s.block


@contextmanager
def blocks_skipped(expert: Any, block: int | None) -> Iterator[None]:
    """Runs ``expert`` with its block ``block`` passed through (its input returned unrun)."""
    if block is None:
        yield
        return
    blocks = expert.blocks
    if not 0 <= block < len(blocks):
        raise InvalidInputError(f"shortcut.block: got {block}; allowed: 0 to {len(blocks) - 1} (the expert's blocks)")
    module = blocks[block]

    def passthrough(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states

    module.forward = passthrough
    try:
        yield
    finally:
        del module.forward  # the class's forward again


def compute_saving(
    shortcut: AnyShortcut | None, total: int, switch: int | None, num_layers: int, cfg: bool = True
) -> float:
    """The share of a run's transformer work a shortcut saves (0 to 1).

    Work is counted in block passes: a forward pass runs ``num_layers`` blocks (the patch embedding
    and the head are left out, under 1% at A14B size), a step runs two passes with CFG and one
    without.

    Args:
        shortcut: the deviation (None saves nothing).
        total: the request's steps; ``switch``: the first low-noise step index (None: one phase).
        num_layers: blocks per expert (40 for A14B).
        cfg: whether the request runs CFG (a guidance scale above 1).
    """
    passes = 2 if cfg else 1
    work = total * passes * num_layers
    plan = ShortcutPlan(shortcut, total, switch)
    saved = 0
    for index in range(total):
        high = switch is None or index < switch
        if plan.reuses_prediction(index):
            saved += passes * num_layers
        elif cfg and (plan.cfg_off(index) or plan.reuses_uncond(index)):
            saved += num_layers
        elif plan.skipped_block(high) is not None:
            saved += passes
    return saved / work
