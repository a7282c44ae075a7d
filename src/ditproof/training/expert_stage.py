"""Stage 2: train the two experts (and the text encoder) with flow matching, on the stage-1 VAE.

1. Data: ``dataset_clips`` training-split clips are rendered on the device, encoded once with
   the frozen stage-1 VAE (posterior means) and normalized with its ``latents_mean`` and
   ``latents_std``, exactly as the pipeline un-normalizes before decoding.
2. Each step draws a batch (indices from a seeded generator), replaces a caption by the empty
   negative prompt with probability ``uncond_rate`` (so classifier-free guidance has an
   unconditional model to push against), encodes the captions as ``WanPipeline.encode_prompt``
   does, and adds the two experts' flow-matching losses, each at sigmas of its own range of the
   shifted schedule (:mod:`ditproof.training.flow`).
3. The text encoder is trained jointly with both experts (``train_text_encoder``): a caption
   binds colours to nouns by position ("a red circle ... on a blue background"), and a random
   frozen encoder mixes token positions too weakly for the experts to recover that binding; its
   gradient is the sum of both experts' losses, as both read the same embeddings at inference.
4. An exponential moving average of the weights (decay warmed up from 0) is what ships.
5. ``init_from`` continues from an earlier stage-2 bundle (its shipped weights; fresh optimizer
   and schedule), so the stage can run in several GPU calls of bounded length; ``compile`` runs
   the experts through ``torch.compile`` (falling back to eager when compilation fails).

Output: a bundle (:mod:`ditproof.training.bundle`): weights in float16, configurations, the
training reports of both stages and the loss-curve image.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ditproof.training.bundle import write_bundle
from ditproof.training.common import (
    Log,
    StepPlan,
    autocast,
    derived_seed,
    device_generator,
    learning_rate,
    print_log,
    synchronize,
)
from ditproof.training.components import (
    ModelSize,
    build_expert,
    build_grammar_tokenizer,
    build_text_encoder,
    count_parameters,
    make_pipeline,
    model_size,
    transformer_config,
)
from ditproof.training.flow import encode_text, flow_matching_loss, sample_sigmas
from ditproof.training.report import LossHistory, StageReport, hardware, utc_now
from ditproof.training.synthetic import render_clips, sample_clip

CAPTION_TOKENS = 32
"""Token positions the captions are padded to before encoding (the longest caption has 20)."""


class ExpertStageConfig(BaseModel):
    """Settings of stage 2."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: str = "shipped"
    seed: int = Field(default=0, ge=0)
    steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=128, ge=1)
    learning_rate: float = Field(default=5e-4, gt=0)
    warmup_steps: int = Field(default=200, ge=1)
    weight_decay: float = Field(default=0.01, ge=0)
    dataset_clips: int = Field(default=16384, ge=1)
    encode_batch: int = Field(default=64, ge=1)
    uncond_rate: float = Field(default=0.1, ge=0, le=1)
    train_shift: float = Field(default=12.0, gt=0)
    boundary_ratio: float = Field(default=0.875, gt=0, lt=1)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    train_text_encoder: bool = True
    init_from: str | None = None
    compile: bool = False
    device: str = "cpu"
    time_budget_s: float = Field(default=400.0, gt=0)
    log_every: int = Field(default=50, ge=1)


@torch.no_grad()
def encode_dataset(
    vae: AutoencoderKLWan, config: ExpertStageConfig, device: torch.device, log: Log
) -> tuple[torch.Tensor, list[str]]:
    """Renders and encodes the training clips; returns normalized latents and their captions."""
    size = model_size(config.size)
    seed = derived_seed(config.seed, "experts-data")
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    chunks: list[torch.Tensor] = []
    captions: list[str] = []
    for start in range(0, config.dataset_clips, config.encode_batch):
        n = min(config.encode_batch, config.dataset_clips - start)
        clips = [sample_clip(seed, start + i, "train", size.width, size.height, size.num_frames) for i in range(n)]
        captions.extend(c.scene.caption() for c in clips)
        with autocast(device):
            latent = vae.encode(render_clips(clips, device)).latent_dist.mean
        chunks.append(((latent.float() - mean) / std).to(torch.bfloat16 if device.type == "cuda" else torch.float32))
        if start == 0 or (start // config.encode_batch) % 50 == 0:
            log(f"experts: encoded {start + n}/{config.dataset_clips} clips")
    return torch.cat(chunks), captions


def _losses(
    runners: dict[str, Any],
    text_encoder: nn.Module,
    x0: torch.Tensor,
    noise: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    config: ExpertStageConfig,
    size: ModelSize,
    sigma_gen: torch.Generator,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Both experts' flow-matching losses on one batch, each at sigmas of its own range."""
    losses = {}
    with autocast(device):
        text = encode_text(text_encoder, ids, mask, size.text_max_length)
        for name, expert in runners.items():
            sigma = sample_sigmas(config.batch_size, name, config.train_shift, config.boundary_ratio, sigma_gen, device)
            losses[name] = flow_matching_loss(expert, x0, noise, sigma, text)
    return losses


def _continue_from(
    bundle_dir: str, vae: AutoencoderKLWan, text_encoder: nn.Module, high: nn.Module, low: nn.Module, log: Log
) -> dict[str, Any]:
    """Loads an earlier stage-2 bundle's text encoder and experts; returns what it was.

    Raises:
        ValueError: the bundle was trained on another VAE or has other shapes.
    """
    from ditproof.training.bundle import read_bundle

    pipe, reports = read_bundle(Path(bundle_dir))
    ours, theirs = vae.state_dict(), pipe.vae.state_dict()
    if ours.keys() != theirs.keys() or any(
        not torch.equal(ours[k].cpu().half().float(), theirs[k].cpu()) for k in ours
    ):
        raise ValueError(f"init_from: the bundle {bundle_dir} was trained on another VAE than --vae-from")
    for target, source in ((text_encoder, pipe.text_encoder), (high, pipe.transformer), (low, pipe.transformer_2)):
        target.load_state_dict(source.state_dict(), strict=True)
    earlier = reports["experts"]
    log(f"experts: continuing from {bundle_dir} ({earlier.steps_done} steps, {earlier.train_seconds:.0f} s)")
    return {
        "bundle": Path(bundle_dir).name,
        "steps_done": earlier.steps_done,
        "train_seconds": earlier.train_seconds,
        "wall_seconds": earlier.wall_seconds,
        "final": earlier.final,
    }


def train_experts(config: ExpertStageConfig, vae_dir: Path, out_dir: Path, log: Log = print_log) -> StageReport:
    """Runs stage 2 from the stage-1 output folder ``vae_dir`` and writes the bundle to ``out_dir``."""
    started, wall = utc_now(), time.perf_counter()
    device = torch.device(config.device)
    size = model_size(config.size)
    vae_report = StageReport.load(vae_dir / "vae_report.json")
    vae = AutoencoderKLWan.from_pretrained(vae_dir / "vae", local_files_only=True).to(device).eval()
    vae.requires_grad_(False)

    # 1. Data.
    data_start = time.perf_counter()
    latents, captions = encode_dataset(vae, config, device, log)
    data_seconds = time.perf_counter() - data_start
    tokenizer = build_grammar_tokenizer()
    tokens = tokenizer([*captions, ""], padding="max_length", max_length=CAPTION_TOKENS, return_tensors="pt")
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    if int(mask.sum(dim=1).max()) >= CAPTION_TOKENS:
        raise RuntimeError(f"a caption fills all {CAPTION_TOKENS} token positions; raise CAPTION_TOKENS")
    empty_ids, empty_mask = ids[-1:], mask[-1:]
    ids, mask = ids[:-1], mask[:-1]
    log(f"experts: dataset {tuple(latents.shape)} in {data_seconds:.1f} s")

    # 2. Models.
    text_encoder = build_text_encoder(size, len(tokenizer), config.seed)
    high = build_expert(size, config.seed, "transformer")
    low = build_expert(size, config.seed, "transformer_2")
    earlier = _continue_from(config.init_from, vae, text_encoder, high, low, log) if config.init_from else None
    text_encoder.to(device).train(config.train_text_encoder).requires_grad_(config.train_text_encoder)
    high.to(device).train().requires_grad_(True)
    low.to(device).train().requires_grad_(True)
    modules = [high, low] + ([text_encoder] if config.train_text_encoder else [])
    params = [p for m in modules for p in m.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.99),
        fused=device.type == "cuda",
    )
    ema = [p.detach().clone().float() for p in params]
    log(
        f"experts: 2 × {count_parameters(high) / 1e6:.2f}M + text encoder {count_parameters(text_encoder) / 1e6:.2f}M "
        f"parameters, batches of {config.batch_size}"
    )

    # 3. Training loop.
    batch_gen = device_generator(device, derived_seed(config.seed, "experts-batches"))
    noise_gen = device_generator(device, derived_seed(config.seed, "experts-noise"))
    sigma_gen = device_generator(device, derived_seed(config.seed, "experts-sigmas"))
    history = LossHistory(config.log_every)
    plan = StepPlan(config.steps, config.time_budget_s)
    runners: dict[str, Any] = {"high": high, "low": low}
    if config.compile:
        runners = {name: torch.compile(expert) for name, expert in runners.items()}
    compiled = config.compile
    synchronize(device)
    train_start = time.perf_counter()
    steps_done, stopped_early = 0, False
    while steps_done < plan.total:
        step = steps_done
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, plan.total, config.learning_rate, config.warmup_steps)
        index = torch.randint(len(latents), (config.batch_size,), generator=batch_gen, device=device)
        drop = torch.rand(config.batch_size, generator=batch_gen, device=device) < config.uncond_rate
        batch_ids = torch.where(drop[:, None], empty_ids, ids[index])
        batch_mask = torch.where(drop[:, None], empty_mask, mask[index])
        x0 = latents[index].float()
        noise = torch.randn(x0.shape, generator=noise_gen, device=device)
        try:
            losses = _losses(runners, text_encoder, x0, noise, batch_ids, batch_mask, config, size, sigma_gen, device)
            loss = losses["high"] + losses["low"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except Exception as exc:  # torch.compile failing on this platform: the same step again, eager
            if not compiled:
                raise
            log(f"experts: torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); training eager")
            runners, compiled = {"high": high, "low": low}, False
            losses = _losses(runners, text_encoder, x0, noise, batch_ids, batch_mask, config, size, sigma_gen, device)
            loss = losses["high"] + losses["low"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            rate = min(config.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1 - rate)
        steps_done = step + 1
        elapsed = time.perf_counter() - train_start
        plan.observe(steps_done, elapsed)
        row = history.add(step, {"loss_high": losses["high"], "loss_low": losses["low"], "grad_norm": grad_norm})
        if row is not None:
            log(
                f"experts step {steps_done}/{plan.total} "
                + " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step")
            )
        if plan.over_time(elapsed):
            stopped_early = steps_done < plan.total
            log(f"experts: time budget of {config.time_budget_s:.0f} s reached after {steps_done} steps")
            break
    history.flush(steps_done - 1)
    synchronize(device)
    train_seconds = time.perf_counter() - train_start

    # 4. The averaged weights ship.
    with torch.no_grad():
        for param, average in zip(params, ema, strict=True):
            param.copy_(average.to(param.dtype))
    for module in (text_encoder, high, low, vae):
        module.eval().requires_grad_(False)
    pipe = make_pipeline(tokenizer, text_encoder.cpu(), vae.cpu(), high.cpu(), low.cpu())
    report = StageReport(
        stage="experts",
        config=config.model_dump(),
        size={
            "name": size.name,
            "transformer": transformer_config(size),
            "text_encoder": size.text_encoder,
            "width": size.width,
            "height": size.height,
            "frames": size.num_frames,
            "text_max_length": size.text_max_length,
        },
        hardware=hardware(device),
        started_utc=started,
        wall_seconds=round(time.perf_counter() - wall, 2),
        train_seconds=round(train_seconds, 2),
        steps_done=steps_done,
        stopped_early=stopped_early,
        parameters={
            "transformer": count_parameters(high),
            "transformer_2": count_parameters(low),
            "text_encoder": count_parameters(text_encoder),
            "vae": count_parameters(vae),
        },
        history=history.rows,
        final=history.final(),
        extra={
            "planned_steps": plan.total,
            "dataset_clips": len(latents),
            "data_seconds": round(data_seconds, 2),
            "caption_tokens": CAPTION_TOKENS,
            "compiled": compiled,
            **({"continued_from": earlier} if earlier else {}),
        },
    )
    write_bundle(pipe, out_dir, {"vae": vae_report, "experts": report})
    return report
