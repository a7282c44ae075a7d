"""The model presets: names, descriptions and native sizes, readable without torch.

``ditproof info`` and the CLI's defaults read them without importing torch or diffusers; loading
a preset is :func:`ditproof.models.registry.load_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

WAN22_PATH_ENV = "DITPROOF_WAN22_PATH"


@dataclass(frozen=True)
class ModelPreset:
    """A named way to obtain a two-expert Wan pipeline."""

    name: str
    description: str
    text_max_length: int
    default_dtype: str
    # Request fields the model was made for, where they differ from the request's defaults (the
    # official Wan2.2 ones): the CLI uses them unless told otherwise.
    native_request: tuple[tuple[str, int], ...] = ()


PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in (
        ModelPreset(
            "wan2.2-t2v-a14b",
            f"Wan2.2-T2V-A14B from a local diffusers-format folder (--model-path or ${WAN22_PATH_ENV}); "
            "never downloaded",
            512,
            "bfloat16",
        ),
        ModelPreset(
            "wan-a14b-shape",
            "exact A14B shapes (2×14B experts, UMT5-XXL, Wan2.1 VAE) with seeded random weights built on "
            "the device; for GPU benchmarks and experiments without weights",
            512,
            "bfloat16",
        ),
        ModelPreset(
            "wan-shapes-small",
            "the shipped small Wan2.2-architecture model, trained on synthetic shape videos "
            "(src/ditproof/models/shipped/MODEL_CARD.md; CPU, float32)",
            512,
            "float32",
            (("width", 128), ("height", 128), ("num_frames", 17), ("num_inference_steps", 20)),
        ),
        ModelPreset(
            "wan-tiny-random",
            "a tiny two-expert Wan2.2 pipeline with seeded random weights, for tests (CPU, float32)",
            64,
            "float32",
            (("width", 64), ("height", 48), ("num_frames", 5), ("num_inference_steps", 4)),
        ),
    )
}


SIZE_FIELDS = ("width", "height", "num_frames", "num_inference_steps")


def native_sizes(model: str, given: Mapping[str, int | None] | None = None) -> dict[str, int]:
    """The size, frame count and steps to request from ``model``: each value given (not None),
    else the model's native value (:attr:`ModelPreset.native_request`), else the request's default.

    ``given`` names the fields wanted (default: width, height, num_frames, num_inference_steps);
    a model that is not a preset (a folder) gets the request's defaults.
    """
    from ditproof.protocol.request import GenerationRequest

    native = dict(PRESETS[model].native_request) if model in PRESETS else {}
    defaults = GenerationRequest.model_fields
    wanted = dict.fromkeys(SIZE_FIELDS) if given is None else given
    return {
        name: value if value is not None else native.get(name, defaults[name].default) for name, value in wanted.items()
    }
