"""Synthetic data and training of the shipped small Wan2.2-architecture model (``wan-shapes-small``).

Modules:
    grammar     the caption grammar (colours, shapes, directions), parsing, the held-out split
    synthetic   seeded clip parameters (numpy ``Generator`` per clip) and the renderer (torch)
    components  the model's component configurations, tokenizer, construction and saving
    flow        flow-matching helpers: the shifted sigma schedule, per-expert sigma ranges
    vae_stage   stage 1: train the VAE, measure its latent statistics
    expert_stage stage 2: train the two experts (and the text encoder) with flow matching
    report      versioned training reports, the loss-curve image and the model card
    assemble    stage-2 bundle → diffusers-format ``WanPipeline`` folder
"""
