"""Checks of the text a request brings, against the loaded model's text encoder."""

from __future__ import annotations

from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from ditproof.errors import InvalidInputError
from ditproof.models.registry import LoadedModel


def check_prompt_length(model: LoadedModel, *texts: str) -> None:
    """Refuses texts longer than the text encoder's window (they would be truncated silently)."""
    tokenizer = model.pipeline.tokenizer
    for name, text in zip(("prompt", "negative_prompt"), texts, strict=False):
        count = len(tokenizer(prompt_clean(text), add_special_tokens=True, truncation=False)["input_ids"])
        if count > model.text_max_length:
            raise InvalidInputError(
                f"{name}: got {count} tokens; allowed: at most {model.text_max_length} tokens for model "
                f"{model.preset} (longer prompts would be truncated)"
            )
