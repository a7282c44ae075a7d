"""The ML-node HTTP service: video API, Gonka management, validation (``ditproof serve``).

See ``docs/server.md``. The package is a thin layer: routes parse and format, the node
(``node.py``) owns the service state, and the GPU worker's one thread (``worker.py``) runs the library (:func:`ditproof.generation.execute.execute`,
:func:`ditproof.validation.validate`).
"""

from ditproof.server.app import create_app
from ditproof.server.config import ServerConfig, load_config

__all__ = ["ServerConfig", "create_app", "load_config"]
