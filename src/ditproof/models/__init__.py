"""Model presets: every one is a diffusers ``WanPipeline`` with two experts."""

from ditproof.models.registry import PRESETS, LoadedModel, ModelPreset, load_model

__all__ = ["PRESETS", "LoadedModel", "ModelPreset", "load_model"]
