"""The GPU kernels ditproof brings beside diffusers' own: every one in this package.

- :mod:`ditproof.kernels.fused`: Triton kernels and custom ops for the fused elementwise steps
  (the feed-forward's tanh-GELU in its up-projection's epilogue, the query/key RMS norm with the
  rotary embedding, the norm with the modulation) and the diffusers patching that applies them at
  load time (``LoadOptions.fuse_elementwise``);
- :mod:`ditproof.kernels.flash3`: FlashAttention-3 (the ``fa3-fwd`` package) as an attention backend;
- :mod:`ditproof.kernels.flash4`: FlashAttention-4 (CuTe DSL) as an attention backend.

Which kernel a run uses is chosen elsewhere: load options in :mod:`ditproof.models.registry`,
the attention backend per run in :mod:`ditproof.generation.attention`. Each kernel changes the low
bits of the output and is named in the runtime class (docs/determinism.md).
"""
