"""Stage 1: train the VAE on synthetic clips, then measure its latent statistics.

Loss: mean squared error plus mean absolute error of the reconstruction (frames in [-1, 1]) and
a small KL term (weight ``kl_weight`` on the per-element mean KL to N(0, 1)), decoding a sample
of the posterior. Clips are rendered on the fly on the training device from seeded parameters
(training split only). Afterwards the per-channel mean and standard deviation of the posterior
means over ``stats_clips`` fresh clips become the VAE config's ``latents_mean`` and
``latents_std``, which the pipeline uses to normalize latents for the experts.

Output folder (all files at most one level deep, each under 16 MB for the shipped size):
``vae/config.json``, ``vae/diffusion_pytorch_model.safetensors`` (float32, to resume from),
``vae_report.json``, ``vae_loss.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from pydantic import BaseModel, ConfigDict, Field

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
from ditproof.training.components import build_vae, count_parameters, model_size
from ditproof.training.report import LossHistory, StageReport, hardware, utc_now, write_plot
from ditproof.training.synthetic import Clip, render_clips, render_clips_with_coverage, sample_clip


class VaeStageConfig(BaseModel):
    """Settings of stage 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: str = "shipped"
    seed: int = Field(default=0, ge=0)
    steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    warmup_steps: int = Field(default=100, ge=1)
    kl_weight: float = Field(default=1e-6, ge=0)
    foreground_weight: float = Field(default=10.0, ge=0)
    stats_clips: int = Field(default=256, ge=2)
    eval_clips: int = Field(default=32, ge=1)
    device: str = "cpu"
    time_budget_s: float = Field(default=420.0, gt=0)
    log_every: int = Field(default=25, ge=1)


def _clips(seed: int, start: int, count: int, split: str, size_name: str) -> list[Clip]:
    size = model_size(size_name)
    return [sample_clip(seed, start + i, split, size.width, size.height, size.num_frames) for i in range(count)]


def _batch(seed: int, start: int, count: int, split: str, size_name: str, device: torch.device) -> torch.Tensor:
    return render_clips(_clips(seed, start, count, split, size_name), device)


@torch.no_grad()
def latent_statistics(
    vae: AutoencoderKLWan, config: VaeStageConfig, device: torch.device
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of posterior means over ``config.stats_clips`` training-split clips."""
    seed = derived_seed(config.seed, "vae-stats")
    total = torch.zeros(vae.config.z_dim, dtype=torch.float64, device=device)
    total_sq = torch.zeros_like(total)
    count = 0
    for start in range(0, config.stats_clips, config.batch_size):
        n = min(config.batch_size, config.stats_clips - start)
        with autocast(device):
            mean = vae.encode(_batch(seed, start, n, "train", config.size, device)).latent_dist.mean
        mean = mean.double()
        total += mean.sum(dim=(0, 2, 3, 4))
        total_sq += (mean * mean).sum(dim=(0, 2, 3, 4))
        count += mean.numel() // mean.shape[1]
    mu = total / count
    std = (total_sq / count - mu * mu).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mu], [round(float(v), 6) for v in std]


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKLWan, config: VaeStageConfig, device: torch.device) -> float:
    """PSNR (dB, frames in [0, 1]) of posterior-mean reconstructions of held-out-split clips."""
    seed = derived_seed(config.seed, "vae-eval")
    errors = []
    for start in range(0, config.eval_clips, config.batch_size):
        n = min(config.batch_size, config.eval_clips - start)
        video = _batch(seed, start, n, "heldout", config.size, device)
        with autocast(device):
            rec = vae.decode(vae.encode(video).latent_dist.mean).sample
        errors.append(F.mse_loss(rec.float(), video, reduction="none").mean(dim=(1, 2, 3, 4)) / 4.0)
    mse = torch.cat(errors).mean().item()
    return float(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))))


def train_vae(config: VaeStageConfig, out_dir: Path, log: Log = print_log) -> StageReport:
    """Runs stage 1 and writes its output folder (see the module docstring)."""
    started, wall = utc_now(), time.perf_counter()
    device = torch.device(config.device)
    size = model_size(config.size)
    vae = build_vae(size, config.seed).to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)
    data_seed = derived_seed(config.seed, "vae-data")
    sampler = device_generator(device, derived_seed(config.seed, "vae-posterior"))
    history = LossHistory(config.log_every)
    plan = StepPlan(config.steps, config.time_budget_s)
    log(f"vae: {count_parameters(vae) / 1e6:.2f}M parameters, batches of {config.batch_size} clips")
    synchronize(device)
    train_start = time.perf_counter()
    steps_done, stopped_early = 0, False
    while steps_done < plan.total:
        step = steps_done
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, plan.total, config.learning_rate, config.warmup_steps)
        clips = _clips(data_seed, step * config.batch_size, config.batch_size, "train", config.size)
        video, coverage = render_clips_with_coverage(clips, device)
        # Objects cover a few percent of a frame: weighting their pixels keeps colours, shapes and
        # motion from being traded for a slightly better background.
        weight = 1.0 + config.foreground_weight * coverage
        with autocast(device):
            posterior = vae.encode(video).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=sampler, device=device, dtype=posterior.mean.dtype)
            rec = vae.decode(posterior.mean + posterior.std * noise).sample
        error = rec.float() - video
        mse = (weight * error * error).mean() / weight.mean()
        l1 = (weight * error.abs()).mean() / weight.mean()
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
        kl = 0.5 * (mean * mean + logvar.exp() - 1.0 - logvar).mean()
        loss = mse + l1 + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        steps_done = step + 1
        elapsed = time.perf_counter() - train_start
        plan.observe(steps_done, elapsed)
        row = history.add(step, {"loss": loss.item(), "mse": mse.item(), "l1": l1.item(), "kl": kl.item()})
        if row is not None:
            log(
                f"vae step {steps_done}/{plan.total} " + " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step")
            )
        if plan.over_time(elapsed):
            stopped_early = steps_done < plan.total
            log(f"vae: time budget of {config.time_budget_s:.0f} s reached after {steps_done} steps")
            break
    history.flush(steps_done - 1)
    synchronize(device)
    train_seconds = time.perf_counter() - train_start

    vae.eval()
    latents_mean, latents_std = latent_statistics(vae, config, device)
    vae.register_to_config(latents_mean=latents_mean, latents_std=latents_std)
    psnr = reconstruction_psnr(vae, config, device)
    log(f"vae: held-out reconstruction PSNR {psnr:.2f} dB; latent std {min(latents_std):.3g}..{max(latents_std):.3g}")
    out_dir.mkdir(parents=True, exist_ok=True)
    vae.cpu().save_pretrained(out_dir / "vae", safe_serialization=True)
    report = StageReport(
        stage="vae",
        config=config.model_dump(),
        size={
            "name": size.name,
            "vae": size.vae,
            "width": size.width,
            "height": size.height,
            "frames": size.num_frames,
        },
        hardware=hardware(device),
        started_utc=started,
        wall_seconds=round(time.perf_counter() - wall, 2),
        train_seconds=round(train_seconds, 2),
        steps_done=steps_done,
        stopped_early=stopped_early,
        parameters={"vae": count_parameters(vae)},
        history=history.rows,
        final=history.final(),
        extra={
            "planned_steps": plan.total,
            "heldout_psnr_db": round(psnr, 3),
            "latents_mean": latents_mean,
            "latents_std": latents_std,
        },
    )
    report.save(out_dir / "vae_report.json")
    write_plot(out_dir / "vae_loss.png", history.rows, f"VAE training ({size.name}, {steps_done} steps)")
    return report
