"""The provisional H100 coefficients, fitted to the forward times measured when the design was written.

Those figures are, for one H100 (A14B expert shape, random bf16 weights, diffusers' default SDPA
attention), the time of a 4-layer forward multiplied by 10, at six sizes (listed below and in
docs/pricing.md; e.g. 3.31 s per 480p forward at N = 32,760). They were
not produced by :mod:`ditproof.pricing.calibrate`, so the entry is ``provisional`` until a
calibration run on an H100 (``tools/pricing_calibrate.py``) replaces it. The fit is the same
code as a calibration's.
"""

from __future__ import annotations

from ditproof.pricing.calibrate import fit_expert
from ditproof.pricing.cost import HIGH_NOISE, LOW_NOISE
from ditproof.protocol.pricing import CoefficientEntry, Hardware, TimingMethod

# (W×H×F, N, seconds per full forward = 4-layer time × 10)
DESIGN_H100_POINTS = (
    ("416x240x1", 390, 0.065),
    ("416x240x17", 1_950, 0.128),
    ("416x240x81", 8_190, 0.565),
    ("832x480x41", 17_160, 1.35),
    ("832x480x81", 32_760, 3.31),
    ("1280x720x81", 75_600, 12.3),
)
DESIGN_DATE = "2026-11-26"
H100_NAME = "NVIDIA H100 80GB HBM3"


def design_entry() -> CoefficientEntry:
    """The provisional entry for the A14B shape on an H100, from the design-time H100 figures."""
    sizes = [size for size, _, _ in DESIGN_H100_POINTS]
    patches = [n for _, n, _ in DESIGN_H100_POINTS]
    samples = [[round(t / 10.0, 9)] for _, _, t in DESIGN_H100_POINTS]
    fit = fit_expert(HIGH_NOISE, sizes, patches, samples, scale=10.0)
    return CoefficientEntry(
        models=("wan-a14b-shape", "wan2.2-t2v-a14b"),
        gpu=H100_NAME,
        status="provisional",
        date=DESIGN_DATE,
        provenance=(
            "PROVISIONAL: fitted by ditproof.pricing.design_figures to the H100 forward times measured when the "
            "design was written "
            "(A14B expert shape, random bf16 weights, diffusers' default SDPA; a 4-layer forward timed and "
            "multiplied by 10; a 512-token text context assumed). Samples are those figures divided by 10, not raw timings. Replace with a "
            "calibration run: tools/pricing_calibrate.py on an H100."
        ),
        hardware=Hardware(
            device=H100_NAME,
            device_type="cuda",
            sm_count=132,
            compute_capability="9.0",
            cuda=None,
            torch="unrecorded",
            diffusers="unrecorded",
            cpu_arch="x86_64",
        ),
        method=TimingMethod(
            timer="design-figures",
            dtype="bfloat16",
            attention_backend="sdpa",
            text_tokens=512,
            layers_timed=4,
            layers_total=40,
            scaling="linear-in-layers",
        ),
        max_patches=75_600,
        experts={HIGH_NOISE: fit, LOW_NOISE: fit.model_copy(update={"timed_as": HIGH_NOISE, "points": ()})},
    )
