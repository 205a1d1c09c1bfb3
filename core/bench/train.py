"""Benchmark ``train``: what the one training loop costs per step against a bare diffusers + peft loop.

Both train the same peft LoRA (rank 4 on the UNet's attention projections) of the built-in SynthFace base
(``assets/models/diffusers/synthface-base``) on the same batches with the same objective (the denoising loss of
``core/concept/diffusion.denoise_loss`` on VAE latents of SynthFace renders, noise and timesteps drawn from the step),
the same optimizer (AdamW, foreach), gradient clipping and constant learning rate. The bare loop is what a diffusers
example does without accelerate: zero_grad, loss, backward, clip, step. The loop adds accelerate's device placement
and autocast, progress reports, the finite-loss check, the loss history and the schedule.

Runs are interleaved (loop, bare, bare, loop, ...) from the same starting LoRA, so drift in the machine's speed (a
busy CPU) hits both alike; each run times ``steps`` steps after ``warmup`` untimed ones, and the figures are medians
over the repeats. ``ratio`` = loop / bare (goal <= 1.05).
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _data(dp, n: int, seed: int):
    """Latents (n, C, h, w) of n SynthFace renders and the frozen text encoder's states for their captions."""
    from ..concept.diffusion import caption_ids, scaling_factor
    from ..models import native_size
    from ..images import comfy_to_model, numpy_to_comfy
    from ..synthface.captions import caption
    from ..synthface.render import random_attributes, render
    from ..synthface.splits import identities

    rng = np.random.default_rng(seed)
    ids = identities("train")
    size = native_size(dp)
    attrs = [random_attributes(rng) for _ in range(n)]
    images = np.stack([render(int(ids[int(rng.integers(len(ids)))]), a, size, view=int(rng.integers(1 << 20)))
                       for a in attrs])
    with torch.no_grad():
        x = comfy_to_model(numpy_to_comfy(images))
        latents = dp.vae.encode(x).latent_dist.mean * scaling_factor(dp.vae)
        cond = dp.text_encoder(caption_ids(dp.tokenizer, [caption(a) for a in attrs]))[0]
    return latents, cond


class _Batches:
    """The batch of step ``s``: rows drawn from (seed, s); the loss's noise and timesteps from a generator of s."""

    def __init__(self, latents, cond, batch: int, seed: int = 0):
        self.latents, self.cond, self.batch, self.seed = latents, cond, batch, seed

    def __call__(self, step: int):
        idx = torch.from_numpy(np.random.default_rng([self.seed, step]).integers(0, len(self.latents), self.batch))
        return self.latents[idx], self.cond[idx], torch.Generator().manual_seed(self.seed * 1_000_003 + step)


class LoraDenoiseObjective:
    """The loop's side: the objective protocol around the shared batch and loss."""

    def __init__(self, unet, sched, batches: _Batches):
        self.unet, self.sched, self.batches = unet, sched, batches

    def modules(self):
        return {"unet": self.unet}

    def parameters(self):
        return [p for p in self.unet.parameters() if p.requires_grad]

    def make_batch(self, step):
        return self.batches(step)

    def loss(self, batch, step):
        from ..concept.diffusion import denoise_loss

        latents, cond, gen = batch
        return denoise_loss(self.unet, self.sched, latents, cond, gen), {}


def _run_loop(unet, sched, batches, lr: float, total: int, warmup: int) -> float:
    from ..progress import Progress
    from ..training.loop import TrainConfig, train

    stamps: dict[int, float] = {}

    def on_update(done, _total):
        if done in (warmup, total):
            _sync()
            stamps[done] = time.perf_counter()

    cfg = TrainConfig(steps=total, learning_rate=lr, log_every=0, checkpoint_every=0, work_dir=None)
    train(LoraDenoiseObjective(unet, sched, batches), cfg, Progress(on_update=on_update))
    return (stamps[total] - stamps[warmup]) / (total - warmup)


def _run_bare(unet, sched, batches, lr: float, total: int, warmup: int) -> float:
    """A plain diffusers + peft training loop (no accelerate), as in diffusers' LoRA examples."""
    from ..concept.diffusion import denoise_loss

    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)  # the loop's TrainConfig default
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    unet.train()
    t0 = None
    for step in range(total):
        if step == warmup:
            _sync()
            t0 = time.perf_counter()
        latents, cond, gen = batches(step)
        loss = denoise_loss(unet, sched, latents, cond, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    _sync()
    unet.eval()
    return (time.perf_counter() - t0) / (total - warmup)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_memory() -> tuple[int, str]:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda max_memory_allocated"
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS (CPU)"


def run(quick: bool = False, batch: int | None = None, steps: int | None = None, warmup: int = 3,
        repeats: int | None = None, lr: float = 1e-4, rank: int = 4) -> dict:
    from peft import LoraConfig

    from ..concept.diffusion import training_scheduler
    from ..models import load_pipeline

    batch = batch or (8 if quick else 16)
    steps = steps or (10 if quick else 30)
    repeats = repeats or (3 if quick else 5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dp = load_pipeline("diffusers/synthface-base", device=device, dtype="fp32").pipe
    latents, cond = _data(dp, max(4 * batch, 32), seed=0)
    unet = dp.unet
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    start = {k: v.detach().clone() for k, v in unet.named_parameters() if v.requires_grad}
    sched = training_scheduler(dp)
    batches = _Batches(latents, cond, batch)
    runners = {"loop": _run_loop, "bare": _run_bare}
    times: dict[str, list[float]] = {"loop": [], "bare": []}
    finals: dict[str, dict] = {}
    for r in range(repeats):
        for name in (("loop", "bare") if r % 2 == 0 else ("bare", "loop")):
            with torch.no_grad():
                for k, v in unet.named_parameters():
                    if k in start:
                        v.copy_(start[k])
            times[name].append(runners[name](unet, sched, batches, lr, warmup + steps, warmup))
            finals[name] = {k: v.detach().clone() for k, v in unet.named_parameters() if k in start}
    # the two loops computed the same training (a check that the comparison is fair)
    diff = max(float((finals["loop"][k] - finals["bare"][k]).abs().max()) for k in start)
    moved = max(float((finals["bare"][k] - start[k]).abs().max()) for k in start)  # how far training moved them
    loop_s, bare_s = statistics.median(times["loop"]), statistics.median(times["bare"])
    peak, peak_kind = _peak_memory()
    return {
        "loop_seconds_per_step": loop_s, "bare_seconds_per_step": bare_s, "ratio": loop_s / bare_s,
        "samples_per_second": batch / loop_s, "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
        "ratio_per_repeat": [a / b for a, b in zip(times["loop"], times["bare"])],
        "loop_seconds_per_repeat": times["loop"], "bare_seconds_per_repeat": times["bare"],
        "max_abs_weight_difference_loop_vs_bare": diff, "max_abs_weight_change_in_training": moved,
        "goal_ratio_le_1_05": loop_s / bare_s <= 1.05,
        "settings": {"model": "diffusers/synthface-base", "lora_rank": rank, "lora_targets": LORA_TARGETS,
                     "batch": batch, "timed_steps": steps, "warmup_steps": warmup, "repeats": repeats, "lr": lr,
                     "device": device, "trainable_parameters": sum(v.numel() for v in start.values()),
                     "order": "interleaved (loop, bare), then (bare, loop), ...", "statistic": "median over repeats"},
    }
