"""ditproof: verifiable text-to-video inference for decentralized compute networks."""

__version__ = "0.2.0"

__all__ = ["__version__"]
