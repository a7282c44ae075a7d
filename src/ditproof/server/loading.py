"""Which models a client may load, and with which runtime options (``/api/v1/inference/up``).

Clients name a model; they never pass a path. Allowed names are the ditproof presets and the
aliases the operator maps to local folders in the server configuration. ``additional_args``
follows Gonka's shape (a list of CLI-style strings) and accepts only the runtime options listed
in :data:`ALLOWED_ARGS`; anything else is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from ditproof.models.registry import PRESETS
from ditproof.protocol.options import RuntimeOptions
from ditproof.server.config import ServerConfig
from ditproof.server.errors import invalid, invalid_fields, pydantic_fields

ALLOWED_ARGS = {
    "--device": "device",
    "--attention-backend": "attention_backend",
    "--cfg-mode": "cfg_mode",
    "--vae-dtype": "vae_dtype",
    "--compile": "compile",
    "--fuse-projections": "fuse_projections",
    "--fuse-elementwise": "fuse_elementwise",
    "--offload-text-encoder": "offload_text_encoder",
    "--encode-threads": "encoding.threads",
}
BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
"""Values a boolean flag takes (``--fuse-projections true``)."""
BOOLEAN_FIELDS = frozenset(name for name, info in RuntimeOptions.model_fields.items() if info.annotation is bool)
"""The runtime options whose flags take one of :data:`BOOLEANS` (read from the options model)."""


@dataclass(frozen=True)
class ModelChoice:
    """A resolved model request: the name clients use, what to load and how."""

    name: str
    preset: str
    path: str | None
    options: RuntimeOptions


def allowed_models(config: ServerConfig) -> list[str]:
    """Names this node can load: the operator's aliases and every preset."""
    return sorted(config.models) + [name for name in PRESETS if name not in config.models]


def resolve_model(
    config: ServerConfig, name: str, dtype: str | None = None, additional_args: list[str] | None = None
) -> ModelChoice:
    """Checks a model request and builds its runtime options.

    Raises:
        ApiError: 422 naming the field (``model``, ``dtype`` or ``additional_args``) when refused.
    """
    if name in config.models:
        alias = config.models[name]
        preset, path = alias.preset, alias.path
    elif name in PRESETS:
        preset, path = name, config.model_path if name == "wan2.2-t2v-a14b" else None
    else:
        raise invalid("model", f"got {name!r}; allowed: one of {', '.join(allowed_models(config))}")
    if preset not in PRESETS:
        raise invalid(
            "model", f"alias {name!r} maps to unknown preset {preset!r}; allowed presets: {', '.join(PRESETS)}"
        )
    values: dict[str, object] = {"device": config.device}
    for index, (flag, value) in enumerate(_pairs(additional_args or [])):
        if flag not in ALLOWED_ARGS:
            raise invalid(
                f"additional_args.{index}",
                f"got {flag!r}; allowed: {', '.join(ALLOWED_ARGS)} (each followed by a value)",
            )
        field = ALLOWED_ARGS[flag]
        if field in BOOLEAN_FIELDS:
            if value.lower() not in BOOLEANS:
                raise invalid(f"additional_args.{field}", f"got {value!r}; allowed: true, false, 1 or 0")
            values[field] = BOOLEANS[value.lower()]
        elif field == "encoding.threads":
            if not value.isdigit():
                raise invalid("additional_args.encoding.threads", f"got {value!r}; allowed: a whole number 1 to 64")
            values["encoding"] = {"threads": int(value)}
        else:
            values[field] = value
    chosen = dtype if dtype not in (None, "auto") else (config.dtype or PRESETS[preset].default_dtype)
    values["dtype"] = chosen
    try:
        options = RuntimeOptions.model_validate(values)
    except ValidationError as exc:
        problems = pydantic_fields(exc)
        raise invalid_fields(
            [("dtype" if field == "dtype" else f"additional_args.{field}", msg) for field, msg in problems]
        ) from None
    return ModelChoice(name=name, preset=preset, path=path, options=options)


def _pairs(args: list[str]) -> list[tuple[str, str]]:
    """``["--a", "1", "--b=2"]`` → ``[("--a", "1"), ("--b", "2")]``."""
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(args):
        item = args[index]
        if "=" in item:
            flag, value = item.split("=", 1)
            index += 1
        elif index + 1 < len(args):
            flag, value = item, args[index + 1]
            index += 2
        else:
            raise invalid(
                f"additional_args.{index}", f"got {item!r} without a value; allowed: '--flag value' or '--flag=value'"
            )
        pairs.append((flag, value))
    return pairs
