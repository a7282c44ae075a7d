"""The ML-node HTTP service: video API, Gonka management, validation (``ditproof serve``).

See ``docs/server.md``. The package is a thin layer: routes parse and format, the engine's one
worker thread runs the library (:func:`ditproof.generation.execute.execute`,
:func:`ditproof.validation.validate`).
"""

from ditproof.server.app import create_app
from ditproof.server.config import ServerConfig, load_config

__all__ = ["ServerConfig", "create_app", "load_config"]
