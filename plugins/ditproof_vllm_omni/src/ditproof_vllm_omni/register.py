"""Entry point of ``vllm_omni.general_plugins``: ditproof's pipeline for Wan2.2 text-to-video folders.

vLLM-Omni loads general plugins in every process it starts (API server, engine core, workers);
``register_diffusion_model`` is its documented way for an out-of-tree plugin to replace a
built-in pipeline under the same architecture name (``WanPipeline`` in model_index.json).
Requests without a ditproof job run exactly as in vLLM-Omni's own pipeline.
"""

from __future__ import annotations

import os

DISABLE_ENV = "DITPROOF_OMNI_DISABLE"


def register() -> None:
    """Registers :class:`ditproof_vllm_omni.pipeline.DitproofWan22Pipeline` for ``WanPipeline``.

    Set ``DITPROOF_OMNI_DISABLE=1`` to keep vLLM-Omni's pipeline (for A/B measurements).
    """
    if os.environ.get(DISABLE_ENV) == "1":
        return
    from vllm_omni.diffusion.registry import register_diffusion_model

    register_diffusion_model(
        "WanPipeline",
        "ditproof_vllm_omni.pipeline",
        "DitproofWan22Pipeline",
        pre_process_func_name="get_wan22_pre_process_func",
        post_process_func_name="get_wan22_post_process_func",
    )
