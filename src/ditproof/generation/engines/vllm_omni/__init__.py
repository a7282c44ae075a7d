"""The vLLM-Omni engine: the job protocol shared with the plugin, and the in-process/HTTP runners.

Importing this package needs no vLLM-Omni; only the in-process runner imports ``vllm_omni``.
"""
