"""The ONE training loop of FaceSmith (accelerate-based). Every method plugs in an :class:`Objective`.

The loop owns: the optimizer, mixed precision and device placement (accelerate, so ``accelerate launch`` scales it
to several GPUs/machines), gradient clipping, optional EMA of the trainable parameters, checkpoints with resume,
progress callbacks, interruption (the last checkpoint stays intact and resumable) and the loss history.
An objective owns: which modules train, how a step's batch is made, how a batch becomes a loss, and what the
final artifact is.

Resume is exact: a checkpoint keeps the trainable weights, optimizer, schedule, EMA, the global RNG states and the
fp16 GradScaler, and objectives draw each batch from its step key. A checkpoint also records the settings that shape
the weights (the loop's and the objective's ``TrainConfig.recipe``); resuming under other ones is refused with the
differences (``RecipeMismatch``) instead of silently mixing two runs, and ``resume=False`` starts fresh.

Several processes (``accelerate launch --num_processes N``) are plain data parallelism done by the loop itself, so
objectives need not know about it: objectives run their own, unwrapped modules (a LoRA inside a UNet trains through
the UNet's forward), which a DDP wrapper would never see, so the modules are not DDP-wrapped. Instead the loop
starts every process from rank 0's trainable weights, asks each process for a different batch
(``make_batch(step * N + rank)``), averages the gradients of all optimised parameters across processes after
backward (before clipping), and steps identical optimizers, so all processes hold identical weights at every step
(the effective batch is N times an objective's batch). Only the main process reports progress, logs and writes
checkpoints; an interruption there stops all processes together. One process runs exactly as without accelerate.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_file

from ..locks import folder_lock
from ..memory import check_training_memory
from ..progress import Interrupted, Progress, report
from .checkpoints import candidates as checkpoint_candidates
from .checkpoints import check_resumable, newest_complete, recipe_of

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
    # What else shapes the weights (the objective's data, batch size, model shape ...: plain JSON values). A
    # checkpoint records it with the loop's own shaping settings; resuming under other values is refused.
    recipe: dict = field(default_factory=dict)

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

    def make_batch(self, key: int) -> Any:
        """The batch for one process at one step. ``key`` is unique per (step, process): ``step * num_processes +
        process_index``, so it equals the step when one process trains. Draw randomness from ``key`` (a function of
        it keeps resume exact and gives every process different data)."""
        ...

    def loss(self, batch: Any, step: int) -> tuple[torch.Tensor, dict]:
        """Loss of ``batch`` (what ``make_batch`` returned) at optimisation ``step`` (the same on every process)."""
        ...


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
    """The newest complete checkpoint folder in ``work_dir`` (see ``checkpoints.newest_complete``), or None."""
    ckpt = newest_complete(work_dir)
    return ckpt.path if ckpt is not None else None


def train(objective: Objective, config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Gradients on even where the caller runs under ``torch.inference_mode()`` (ComfyUI and the headless runner
    execute nodes that way); objectives must ``clone()`` input tensors that were created in inference mode.

    With a ``work_dir`` the main process holds its lock file for the whole run, so a second training on the same
    folder is refused with the first one's process id (``FolderLocked``)."""
    lock = contextlib.nullcontext()
    if config.work_dir and os.environ.get("RANK", "0") == "0":  # the main process of an accelerate/torchrun job
        lock = folder_lock(config.work_dir, "training")
    with lock, torch.inference_mode(False), torch.enable_grad():
        return _train(objective, config, progress)


def _train(objective: Objective, config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Run ``config.steps`` optimisation steps of ``objective``; resumable; returns the loss history.

    On interruption (``Interrupted`` from the progress callback, or KeyboardInterrupt) a checkpoint of the current
    step is written (when ``work_dir`` is set) before the exception propagates.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed

    config.check()
    accelerator = Accelerator(mixed_precision=config.precision, cpu=not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP,
                                        DistributedType.MEGATRON_LM):
        raise NotImplementedError(f"the FaceSmith training loop does its own data parallelism; launch it without "
                                  f"{accelerator.distributed_type} (plain `accelerate launch --num_processes N`)")
    if world > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise NotImplementedError(f"{world} processes without torch.distributed ({accelerator.distributed_type}) "
                                  "are not supported by the FaceSmith training loop")
    set_seed(config.seed, device_specific=True)  # seed + process index: the same seed with one process
    modules = objective.modules()
    params = objective.parameters()
    # the memory guard (core/memory.py): refuse a run estimated not to fit before any step (MemoryLimitExceeded)
    check_training_memory(objective, params, accelerator.device, batch_key=rank)
    # foreach: one fused update over all tensors (the default only on CUDA); the same maths, fewer kernel calls
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s))
    for m in modules.values():
        # device placement and mixed-precision forward, but no DDP wrapper: objectives call their own modules
        # (often from inside a frozen model's forward), which a wrapper would never see; gradients are averaged
        # by _average_gradients below instead.
        accelerator.prepare_model(m, evaluation_mode=True)
    # Only the optimizer goes through accelerate (fp16 loss scaling). The scheduler stays plain and steps once per
    # optimizer step: accelerate's scheduler wrapper steps num_processes times per step (it assumes each process's
    # dataloader shrank), which would run the schedule N times too fast here.
    optimizer = accelerator.prepare(optimizer)
    flat_params = [p for n in modules for p in modules[n].parameters() if p.requires_grad]
    opt_params = _unique([p for g in optimizer.param_groups for p in g["params"]])
    if world > 1:
        _broadcast_from_main(modules)  # what DDP does when it wraps: every process starts from rank 0's weights
    ema = _Ema(flat_params, config.ema_decay) if config.ema_decay else None

    result = TrainResult(steps_done=0)
    start = 0
    loaded = newest_complete(config.work_dir) if config.resume else None  # read and checked before applying
    stale = []  # --no-resume: an earlier run's checkpoints, removed once this run has written its first one
    if config.work_dir and not config.resume and Path(config.work_dir).is_dir():
        stale = checkpoint_candidates(config.work_dir)[0]
    if loaded is not None:
        check_resumable(loaded, config)
        ckpt, state = loaded.path, loaded.state
        _load_trainable_state(modules, loaded.trainable)
        optimizer.load_state_dict(loaded.optimizer)
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and loaded.ema is not None:
            ema.load(loaded.ema, state.get("ema_updates", 0))
        start = int(state["step"])
        result.loss_history = list(state.get("loss_history", []))
        result.resumed_from = start
        if hasattr(objective, "load_extra_state"):
            objective.load_extra_state(state.get("objective", {}))
        restore_random_state(accelerator, state, restore_rng=world == 1)
        if accelerator.is_main_process:
            log.info("resumed from %s (step %d)", ckpt, start)
    if world > 1:
        lo_hi = torch.tensor([-start, start], dtype=torch.float64, device=accelerator.device)
        torch.distributed.all_reduce(lo_hi, op=torch.distributed.ReduceOp.MAX)
        if -lo_hi[0].item() != lo_hi[1].item():
            raise RuntimeError(f"the processes resumed from different steps ({-lo_hi[0].item():.0f} to "
                               f"{lo_hi[1].item():.0f}); work_dir {config.work_dir} must be one folder shared by all")

    for m in modules.values():
        m.train()
    t0 = time.time()
    step = start
    try:
        _report(progress, step, config.steps, accelerator)
        while step < config.steps:
            batch = objective.make_batch(step * world + rank)
            with accelerator.autocast():
                loss, logs = objective.loss(batch, step)
            if world == 1:
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
                accelerator.backward(loss)
                loss_value = float(loss.detach())
            else:
                accelerator.backward(loss)
                loss_value = _average_gradients(opt_params, loss, world, accelerator.device)
                if not math.isfinite(loss_value):  # every process sees the same mean, so all raise together
                    raise FloatingPointError(f"loss became {loss_value} (mean over {world} processes) at step "
                                             f"{step}; lower the learning rate")
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(flat_params, config.max_grad_norm)
            optimizer.step()
            if not optimizer.step_was_skipped:  # fp16 overflow: no step, so no schedule step either
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            step += 1
            result.loss_history.append(loss_value)
            if progress is not None and accelerator.is_main_process:
                progress.log(step, config.steps, loss=loss_value)
            if config.log_every and step % config.log_every == 0 and accelerator.is_main_process:
                recent = result.loss_history[-config.log_every:]
                log.info("step %d/%d loss %.4f %s", step, config.steps, sum(recent) / len(recent),
                         " ".join(f"{k}={v:.4g}" for k, v in logs.items()))
            # every checkpoint_every steps and at the last step, so a finished run continues exactly with more steps
            if config.work_dir and config.checkpoint_every and (step % config.checkpoint_every == 0
                                                                or step == config.steps):
                if accelerator.is_main_process:
                    _save_checkpoint(config, step, modules, optimizer, scheduler, ema, result, objective, stale,
                                     random_state(accelerator))
                    stale = []
                accelerator.wait_for_everyone()
            _report(progress, step, config.steps, accelerator)
    except (Interrupted, KeyboardInterrupt) as exc:
        result.interrupted = True
        kept = None
        if config.work_dir and step > start and accelerator.is_main_process:
            kept = _save_checkpoint(config, step, modules, optimizer, scheduler, ema, result, objective, stale,
                                    random_state(accelerator))
        elif loaded is not None:
            kept = loaded.path
        exc.checkpoint = kept  # what the command line names ("checkpoint kept: ...")
        if getattr(exc, "all_processes", False):
            accelerator.wait_for_everyone()  # nobody exits (tearing the job down) before the checkpoint is written
        result.steps_done = step
        raise
    if ema is not None:
        ema.copy_to_params()
    for m in modules.values():
        m.eval()
    result.steps_done = step
    result.seconds = time.time() - t0
    accelerator.wait_for_everyone()
    return result


def _unique(params: list) -> list:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _report(progress: Progress | None, done: int, total: int, accelerator) -> None:
    """``report`` on the main process; with several processes, its ``Interrupted`` stops them all at this step."""
    if accelerator.num_processes == 1:
        report(progress, done, total)
        return
    stop = None
    if accelerator.is_main_process:
        try:
            report(progress, done, total)
        except Interrupted as exc:
            stop = exc
    flag = torch.tensor([0.0 if stop is None else 1.0], device=accelerator.device)
    torch.distributed.all_reduce(flag)
    if flag.item() > 0:
        exc = stop if stop is not None else Interrupted(f"training interrupted at step {done} by the main process")
        exc.all_processes = True
        raise exc


@torch.no_grad()
def _broadcast_from_main(modules: dict[str, torch.nn.Module]) -> None:
    for name in modules:
        for t in list(modules[name].parameters()) + list(modules[name].buffers()):
            if t.is_contiguous():
                torch.distributed.broadcast(t.data, src=0)
            else:  # e.g. channels_last weights
                buf = t.data.contiguous()
                torch.distributed.broadcast(buf, src=0)
                t.data.copy_(buf)


_BUCKET_NUMEL = 1 << 24  # elements per all-reduce (64 MiB of fp32); bounds the extra memory of the flat buffers


@torch.no_grad()
def _average_gradients(params: list[torch.nn.Parameter], loss: torch.Tensor, world: int, device) -> float:
    """Replace every parameter's gradient by its mean over all processes; returns the mean loss.

    A parameter without a gradient on some process counts as zeros there (as DDP does with unused parameters); one
    without a gradient on every process keeps ``grad=None``. All processes issue the same collectives in the same
    order (the parameter list is the optimizer's, built identically everywhere).
    """
    meta = torch.tensor([float(loss.detach())] + [0.0 if p.grad is None else 1.0 for p in params],
                        dtype=torch.float64, device=device)
    torch.distributed.all_reduce(meta)
    has_grad = (meta[1:] > 0).tolist()
    groups: dict[tuple, list] = {}
    for p, h in zip(params, has_grad):
        if h:
            groups.setdefault((p.device, p.dtype), []).append(p)
    for (dev, dtype), group in groups.items():
        bucket, numel = [], 0
        for i, p in enumerate(group):
            bucket.append(p)
            numel += p.numel()
            if numel >= _BUCKET_NUMEL or i == len(group) - 1:
                flat = torch.cat([p.grad.reshape(-1) if p.grad is not None
                                  else torch.zeros(p.numel(), device=dev, dtype=dtype) for p in bucket])
                torch.distributed.all_reduce(flat)
                flat.div_(world)
                offset = 0
                for q in bucket:
                    g = flat[offset:offset + q.numel()].view_as(q)
                    if q.grad is None:
                        q.grad = g.clone()
                    else:
                        q.grad.copy_(g)
                    offset += q.numel()
                bucket, numel = [], 0
    return meta[0].item() / world


def _save_checkpoint(config, step, modules, optimizer, scheduler, ema, result, objective, stale=(),
                     more_state: dict | None = None) -> Path:
    """Write checkpoint-<step>/ atomically (tmp folder + rename), remove ``stale`` ones (an earlier run's, when this
    run started fresh), then prune old ones."""
    root = Path(config.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_trainable_state(modules), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        state = {"step": step, "loss_history": result.loss_history, "scheduler": scheduler.state_dict(),
                 "config": asdict(config), "recipe": recipe_of(config)}
        if ema is not None:
            save_file(ema.state(), str(tmp / "ema.safetensors"))
            state["ema_updates"] = ema.updates
        if hasattr(objective, "extra_state"):
            state["objective"] = objective.extra_state()
        state.update(more_state or {})  # random_state(): RNGs and the GradScaler
        (tmp / "state.json").write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:  # a full disk or an interrupt mid-write: no half checkpoint folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale(stale, step)
    found, _stray = checkpoint_candidates(root)  # newest first; stray folders are never pruned
    for old in found[config.keep_checkpoints:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def random_state(accelerator) -> dict:
    """The states a bit-identical resume needs beyond weights and optimizer, as JSON: the global RNGs (python,
    numpy, torch CPU and CUDA; an objective should draw from its step key, but dropout, augmentations written with
    ``torch.randn`` ... use these) and, with fp16, the GradScaler (its loss scale and growth tracker)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    out = {"rng": {"python": [version, list(internal), gauss],
                   "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                   "torch": torch.get_rng_state().tolist(),
                   "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []}}
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None:
        out["scaler"] = scaler.state_dict()
    return out


def restore_random_state(accelerator, state: dict, restore_rng: bool = True) -> None:
    """Apply what ``random_state`` recorded (a checkpoint from before it was recorded restores nothing). With
    several processes each keeps its own seeded RNGs (only the main process writes checkpoints)."""
    import random

    import numpy as np

    rng = state.get("rng")
    if rng and restore_rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in rng["cuda"]])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


def _remove_stale(stale: list[Path], keep_step: int) -> None:
    """Remove an earlier run's checkpoints (``resume=False``) so they are neither resumed nor kept in place of ours."""
    for old in stale:
        if old.name != f"checkpoint-{keep_step}":
            log.info("removed %s (an earlier run's checkpoint; this run started fresh)", old)
            shutil.rmtree(old, ignore_errors=True)


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


def fit_steps(make_objective, config: TrainConfig, seconds: float, probe_steps: int = 40, warmup: int = 10) -> int:
    """How many steps of ``config`` fit in ``seconds`` on this machine: times ``probe_steps`` steps of a throwaway
    objective from ``make_objective()`` (its own module copies; nothing is saved), after ``warmup`` untimed ones.
    Used to size a training run to a time budget while keeping the run itself a plain, reproducible step count."""
    from dataclasses import replace

    stamps: dict[int, float] = {}
    probe = Progress(on_update=lambda done, total: stamps.setdefault(done, time.perf_counter()))
    train(make_objective(), replace(config, steps=warmup + probe_steps, work_dir=None, warmup_steps=0), probe)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    per_step = (stamps[warmup + probe_steps] - stamps[warmup]) / probe_steps
    return max(1, int(seconds / per_step))
