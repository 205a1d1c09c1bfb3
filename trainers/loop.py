"""The ONE training loop of FaceSmith (accelerate-based). Every method plugs in an :class:`Objective`.

The loop owns: the optimizer, mixed precision and device placement (accelerate, so ``accelerate launch`` scales it
to several GPUs/machines), gradient clipping, optional EMA of the trainable parameters, checkpoints with resume,
progress callbacks, interruption (the last checkpoint stays intact and resumable) and the loss history.
An objective owns: which modules train, how a step's batch is made, how a batch becomes a loss, and what the
final artifact is.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from ..core.progress import Interrupted, Progress, report

log = logging.getLogger("facesmith.train")


@dataclass
class TrainConfig:
    steps: int = 1000
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: str = "no"            # accelerate mixed_precision: "no", "fp16", "bf16"
    ema_decay: float | None = None   # e.g. 0.999; the final artifact then uses EMA weights
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    warmup_steps: int = 0
    lr_schedule: str = "constant"    # "constant" or "cosine" (decays to 10% of learning_rate at the last step)
    work_dir: str | None = None      # where checkpoints live; None = no checkpoints
    resume: bool = True              # continue from the newest checkpoint in work_dir if there is one

    def check(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"precision must be 'no', 'fp16' or 'bf16', got {self.precision!r}")


class Objective(Protocol):
    """What one method trains. ``modules()`` are the trainable modules (checkpointed by name)."""

    def modules(self) -> dict[str, torch.nn.Module]: ...

    def parameters(self) -> list:  # parameters or param groups for the optimizer
        ...

    def make_batch(self, step: int) -> Any: ...

    def loss(self, batch: Any, step: int) -> tuple[torch.Tensor, dict]: ...


@dataclass
class TrainResult:
    steps_done: int
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    interrupted: bool = False


def _trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            out[f"{name}.{k}"] = v.detach().to("cpu").contiguous()
    return out


def _load_trainable_state(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor]) -> None:
    for name, m in modules.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        m.load_state_dict(sub, strict=True)


class _Ema:
    """Exponential moving average of trainable parameters (with the usual bias-corrected warm-up)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"ema.{i}": s.cpu().contiguous() for i, s in enumerate(self.shadow)}

    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        for i, s in enumerate(self.shadow):
            s.copy_(state[f"ema.{i}"])
        self.updates = updates


def lr_factor(config: TrainConfig, step: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant or cosine down to 0.1."""
    import math

    warm = max(1, config.warmup_steps)
    if step < warm:
        return (step + 1) / warm
    if config.lr_schedule == "cosine" and config.steps > warm:
        t = min(1.0, (step - warm) / (config.steps - warm))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def latest_checkpoint(work_dir: str | os.PathLike | None) -> Path | None:
    if not work_dir or not Path(work_dir).is_dir():
        return None
    ckpts = sorted(Path(work_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    ckpts = [c for c in ckpts if (c / "state.json").exists()]
    return ckpts[-1] if ckpts else None


def train(objective: Objective, config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Gradients on even where the caller runs under ``torch.inference_mode()`` (ComfyUI and the headless runner
    execute nodes that way); objectives must ``clone()`` input tensors that were created in inference mode."""
    with torch.inference_mode(False), torch.enable_grad():
        return _train(objective, config, progress)


def _train(objective: Objective, config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Run ``config.steps`` optimisation steps of ``objective``; resumable; returns the loss history.

    On interruption (``Interrupted`` from the progress callback, or KeyboardInterrupt) a checkpoint of the current
    step is written (when ``work_dir`` is set) before the exception propagates.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    config.check()
    accelerator = Accelerator(mixed_precision=config.precision, cpu=not torch.cuda.is_available())
    set_seed(config.seed)
    modules = objective.modules()
    params = objective.parameters()
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s))
    names = list(modules)
    prepared = accelerator.prepare(*[modules[n] for n in names], optimizer, scheduler)
    wrapped = dict(zip(names, prepared[: len(names)]))
    optimizer, scheduler = prepared[len(names)], prepared[len(names) + 1]
    flat_params = [p for n in names for p in modules[n].parameters() if p.requires_grad]
    ema = _Ema(flat_params, config.ema_decay) if config.ema_decay else None

    result = TrainResult(steps_done=0)
    start = 0
    ckpt = latest_checkpoint(config.work_dir) if config.resume else None
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text())
        _load_trainable_state(modules, load_file(str(ckpt / "trainable.safetensors")))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and (ckpt / "ema.safetensors").exists():
            ema.load(load_file(str(ckpt / "ema.safetensors")), state.get("ema_updates", 0))
        start = int(state["step"])
        result.loss_history = list(state.get("loss_history", []))
        result.resumed_from = start
        if hasattr(objective, "load_extra_state"):
            objective.load_extra_state(state.get("objective", {}))
        log.info("resumed from %s (step %d)", ckpt, start)

    for m in wrapped.values():
        m.train()
    t0 = time.time()
    step = start
    try:
        report(progress, step, config.steps)
        while step < config.steps:
            batch = objective.make_batch(step)
            with accelerator.autocast():
                loss, logs = objective.loss(batch, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
            accelerator.backward(loss)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(flat_params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            step += 1
            result.loss_history.append(float(loss.detach()))
            if config.log_every and step % config.log_every == 0:
                recent = result.loss_history[-config.log_every:]
                log.info("step %d/%d loss %.4f %s", step, config.steps, sum(recent) / len(recent),
                         " ".join(f"{k}={v:.4g}" for k, v in logs.items()))
            if config.work_dir and config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                _save_checkpoint(config, step, modules, optimizer, scheduler, ema, result, objective)
            report(progress, step, config.steps)
    except (Interrupted, KeyboardInterrupt):
        result.interrupted = True
        if config.work_dir and step > start:
            _save_checkpoint(config, step, modules, optimizer, scheduler, ema, result, objective)
        result.steps_done = step
        raise
    if ema is not None:
        ema.copy_to_params()
    for m in modules.values():
        m.eval()
    result.steps_done = step
    result.seconds = time.time() - t0
    return result


def _save_checkpoint(config, step, modules, optimizer, scheduler, ema, result, objective) -> Path:
    """Write checkpoint-<step>/ atomically (tmp folder + rename), then prune old ones."""
    root = Path(config.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_trainable_state(modules), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    state = {"step": step, "loss_history": result.loss_history, "scheduler": scheduler.state_dict(),
             "config": asdict(config)}
    if ema is not None:
        save_file(ema.state(), str(tmp / "ema.safetensors"))
        state["ema_updates"] = ema.updates
    if hasattr(objective, "extra_state"):
        state["objective"] = objective.extra_state()
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    ckpts = sorted(root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in ckpts[: max(0, len(ckpts) - config.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def loss_graph(history: list[float], width: int = 512, height: int = 256, title: str = "loss"):
    """A loss curve as a uint8 HxWx3 image (moving average over the raw losses), drawn with PIL."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((8, 4), f"{title} ({len(history)} steps)", fill=(0, 0, 0))
    if len(history) >= 2:
        h = np.asarray(history, dtype=np.float64)
        k = max(1, len(h) // 50)
        smooth = np.convolve(h, np.ones(k) / k, mode="valid")
        lo, hi = float(np.min(smooth)), float(np.max(smooth))
        span = hi - lo or 1.0
        pad = 24
        xs = np.linspace(pad, width - pad, len(smooth))
        ys = height - pad - (smooth - lo) / span * (height - 2 * pad)
        d.line(list(zip(xs.tolist(), ys.tolist())), fill=(30, 90, 200), width=2)
        d.text((8, height - 18), f"min {lo:.4g}  max {hi:.4g}  last {smooth[-1]:.4g}", fill=(60, 60, 60))
    return np.asarray(img)
