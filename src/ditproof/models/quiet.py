"""Keeping diffusers' and transformers' advisory output off terminals and worker logs."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Sets diffusers and transformers to errors only, without progress bars, and offline (nothing
    is ever downloaded). Imports them: call it where they are about to be used."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # "Loading weights" bars of transformers 5
