"""ditproof's vLLM-Omni plugin (installed only into the vLLM-Omni environment).

Modules:
    platform   a CPU platform for vLLM-Omni 0.30 (entry point ``vllm_omni.platform_plugins``)
    attention  the CPU attention backend that platform selects (torch SDPA)
    pipeline   ditproof's Wan2.2 text-to-video pipeline, a subclass of vLLM-Omni's
    register   registers that pipeline for ``WanPipeline`` folders (``vllm_omni.general_plugins``)
    poc        Proof-of-Compute on the experts of a running vLLM-Omni pipeline
"""

__version__ = "0.1.0"
