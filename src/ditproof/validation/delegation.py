"""Registry of validator nodes, for delegating a record to a node of the executor's runtime class.

A validator whose runtime class differs from the executor's cannot regenerate bit for bit (nor
within calibrated tolerance), so it returns ``delegate`` with the class needed; given this
registry, the verdict also lists the nodes that can take the record (``Verdict.delegate_to``:
their URLs, in file order).

File format (JSON, schema ``ditproof.validators/1``)::

    {"schema_version": "ditproof.validators/1",
     "nodes": [{"id": "val-h100-1", "url": "https://val1.example:8080",
                "runtime_classes": ["cuda-sm90/diffusers-0.42.1/*"],   # exact or fnmatch patterns
                "models": ["wan2.2-t2v-a14b"]}]}                        # presets or revisions; [] = any
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ditproof.protocol.files import load_model_file

VALIDATORS_SCHEMA: Literal["ditproof.validators/1"] = "ditproof.validators/1"


class ValidatorNode(BaseModel):
    """One validator node: where it answers and which runtime classes and models it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9._:\-]{1,128}$")
    url: str = Field(pattern=r"^https?://[^\s/$.?#][^\s]*$", max_length=2048)
    runtime_classes: list[str] = Field(min_length=1)
    models: list[str] = []

    def serves(self, runtime_class: str, model_preset: str, model_revision: str) -> bool:
        """True when this node runs ``runtime_class`` (exactly or by pattern) and the model."""
        class_ok = any(c == runtime_class or fnmatchcase(runtime_class, c) for c in self.runtime_classes)
        model_ok = not self.models or model_preset in self.models or model_revision in self.models
        return class_ok and model_ok


class ValidatorRegistry(BaseModel):
    """The known validator nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["ditproof.validators/1"] = VALIDATORS_SCHEMA
    nodes: list[ValidatorNode]

    @field_validator("nodes")
    @classmethod
    def _unique(cls, nodes: list[ValidatorNode]) -> list[ValidatorNode]:
        ids = [n.id for n in nodes]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate node ids {duplicates}; allowed: each id once")
        return nodes

    def nodes_for(self, runtime_class: str, model_preset: str, model_revision: str) -> list[ValidatorNode]:
        """The nodes that can validate a record of ``runtime_class`` and model, in file order."""
        return [n for n in self.nodes if n.serves(runtime_class, model_preset, model_revision)]

    @classmethod
    def load(cls, path: str | Path) -> ValidatorRegistry:
        """Reads and checks a registry file.

        Raises:
            InvalidInputError: missing file, not JSON, or not a valid registry.
        """
        return load_model_file(cls, path, "validators", VALIDATORS_SCHEMA)
