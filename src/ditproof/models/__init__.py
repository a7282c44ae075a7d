"""Model presets: every one is a diffusers ``WanPipeline`` with two experts.

The presets (:mod:`ditproof.models.presets`) import without torch; :func:`load_model` and
:class:`LoadedModel` bring in torch and diffusers, on first use of either name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ditproof.models.presets import PRESETS, ModelPreset

if TYPE_CHECKING:
    from ditproof.models.registry import LoadedModel, load_model

__all__ = ["PRESETS", "LoadedModel", "ModelPreset", "load_model"]


def __getattr__(name: str) -> Any:
    if name in ("LoadedModel", "load_model"):
        from ditproof.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
