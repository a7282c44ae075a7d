"""Named PoC policies and policy files.

``ml-node`` and ``chain`` are Gonka's defaults; ``wan-tiny-random-cpu-fp32`` was calibrated for
the tiny test model on the CPU in float32, ``wan-shapes-small-cpu-fp32`` for the shipped model
there, ``wan-a14b-shape-bf16`` for the A14B-shape random model in bf16 on an H100 (each derived
from target error rates; measurements in docs/poc.md). Any other
name is read as the path of a policy file (schema ``ditproof.poc-policy/1``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from ditproof.errors import InvalidInputError
from ditproof.protocol.poc import CHAIN_POLICY, ML_NODE_POLICY, PocPolicy

_SHIPPED = ("wan-tiny-random-cpu-fp32", "wan-shapes-small-cpu-fp32", "wan-a14b-shape-bf16")


def policy_names() -> list[str]:
    """The names :func:`load_policy` knows besides file paths."""
    return ["ml-node", "chain", *_SHIPPED]


def parse_policy(data: object, source: str) -> PocPolicy:
    """A policy from decoded JSON; errors name the source and the fields."""
    if isinstance(data, dict):
        data = {"schema_version": "ditproof.poc-policy/1", **data}
    try:
        return PocPolicy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: got {e.get('input')!r}; {e['msg']}"
            for e in exc.errors()
        )
        raise InvalidInputError(f"policy {source}: {problems}") from None


def load_policy(name: str) -> PocPolicy:
    """A named policy (see :func:`policy_names`) or a policy file.

    Raises:
        InvalidInputError: unknown name, unreadable file or invalid content.
    """
    if name == "ml-node":
        return ML_NODE_POLICY
    if name == "chain":
        return CHAIN_POLICY
    if name in _SHIPPED:
        text = resources.files("ditproof.poc").joinpath("policies", f"{name}.json").read_text()
        return parse_policy(json.loads(text), name)
    path = Path(name)
    if not path.is_file():
        raise InvalidInputError(f"policy: got {name!r}; allowed: {', '.join(policy_names())} or a policy file path")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"policy: cannot read {name!r} as JSON ({exc})") from None
    return parse_policy(data, name)


def with_overrides(policy: PocPolicy, **overrides: float | int | None) -> PocPolicy:
    """``policy`` with the given fields replaced (None leaves a field as it is)."""
    data = policy.model_dump()
    data.update({key: value for key, value in overrides.items() if value is not None})
    return parse_policy(data, "overrides")
