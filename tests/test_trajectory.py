"""The trajectory capture's fingerprints, computed on a background thread, in step order."""

from __future__ import annotations

import torch
from diffusers import UniPCMultistepScheduler

from ditproof.generation.trajectory import TrajectoryCapture
from ditproof.protocol.options import CaptureOptions
from ditproof.randomness import jl_projection


def test_fingerprints_are_the_in_line_projections_of_each_step_in_order():
    capture = TrajectoryCapture(seed=11, options=CaptureOptions(jl_dim=4), switch_step=None)
    latent = torch.zeros(1, 16, 3, 6, 8)
    expected = []
    projection = jl_projection(11, latent.numel(), 4).to(torch.float64)
    generator = torch.Generator().manual_seed(5)
    for step in range(6):
        latent.copy_(torch.randn(latent.shape, generator=generator))
        expected.append([float(v) for v in (projection @ latent.reshape(-1).to(torch.float64)).to(torch.float32)])
        capture.after_step(step, latent, None)
        latent.mul_(-3.0)  # the loop may update the latent in place: the capture holds its own copy
    capture.finish(6, latent, UniPCMultistepScheduler())
    assert capture.fingerprints == expected
    record = capture.fingerprint_record()
    assert record is not None and record.values == expected and record.dim == 4
