"""The one generation path, its trajectory capture and the runtime fingerprint."""

from ditproof.generation.execute import execute
from ditproof.generation.generate import GenerationResult, generate
from ditproof.generation.runtime import runtime_class, runtime_fingerprint

__all__ = ["GenerationResult", "execute", "generate", "runtime_class", "runtime_fingerprint"]
