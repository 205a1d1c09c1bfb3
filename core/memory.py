"""A memory guard: estimate what a Generate needs before running it, and refuse what cannot fit.

Without it a request for 8192x8192 x 4096 images is accepted and runs into the operating system's OOM killer (or a
CUDA out-of-memory error minutes later). The estimate is deliberately simple and a little generous: the weights plus
activations linear in the number of pixels (the UNet on latents, twice with classifier-free guidance; the VAE
decoder at full resolution for the whole batch, as diffusers decodes it; the output images). It is meant to stop
requests that are clearly too big, not to predict usage to the megabyte.

The limit: ``FACESMITH_MAX_MEMORY`` (``"24G"``, ``"512M"``, a byte count; ``0``/``off`` turns the guard off; the
headless runner's ``--max-memory`` sets it), else a share of the device's memory: 80% of the machine's RAM for the
CPU (psutil, else ``sysconf``, else 8 GiB), the GPU's total memory for CUDA.

Training (``check_training_memory``, called by the training loop before its first step) is estimated the same rough
way: the trainable parameters four times over (weights, gradients and AdamW's two moments), every frozen module's
weights once, and activations for the batch: the objective's ``memory_estimate(batch_size)`` when it has one, else
``TRAIN_ACTIVATION_FACTOR`` times the bytes of the tensors of one ``make_batch``. Again only meant to stop absurd
requests (a batch of a million 1024px images), not to predict a run's peak.
"""
from __future__ import annotations

import os
import re

import torch

__all__ = ["ENV_MAX_MEMORY", "MemoryLimitExceeded", "parse_size", "format_size", "memory_limit",
           "estimate_generate_bytes", "check_generate_memory", "estimate_training_bytes", "check_training_memory"]

ENV_MAX_MEMORY = "FACESMITH_MAX_MEMORY"
CPU_SHARE = 0.8
FALLBACK_BYTES = 8 * 1024 ** 3
UNET_FACTOR = 40    # activation bytes per latent pixel per UNet base channel and element byte (skips, resnets, qkv)
VAE_FACTOR = 8      # the same for the VAE decoder at full resolution
TRAIN_ACTIVATION_FACTOR = 32  # training activations per byte of one batch's tensors (no memory_estimate)
ADAMW_COPIES = 4    # a trainable parameter, its gradient and AdamW's exp_avg and exp_avg_sq
RAISE_HINT = (f"raise the limit with --max-memory SIZE (facesmith run) or the environment variable {ENV_MAX_MEMORY} "
              "(e.g. 64G; 0 turns the guard off)")

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2, "mb": 1024 ** 2, "mib": 1024 ** 2,
          "g": 1024 ** 3, "gb": 1024 ** 3, "gib": 1024 ** 3, "t": 1024 ** 4, "tb": 1024 ** 4, "tib": 1024 ** 4}


class MemoryLimitExceeded(ValueError):
    """A request whose estimated memory is above the limit. ``estimate`` and ``limit`` are in bytes."""

    def __init__(self, message: str, estimate: int, limit: int):
        super().__init__(message)
        self.estimate, self.limit = estimate, limit


def parse_size(text: str | int | None) -> int | None:
    """``"24G"``/``"512MiB"``/``"1.5T"``/``"123456"`` -> bytes; ``0``, ``"off"``, ``"none"`` -> None (no limit)."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"memory size must not be negative, got {text}")
        return text or None
    s = str(text).strip().lower()
    if s in ("", "0", "off", "none", "no", "unlimited"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgt]?i?b?)", s)
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"memory size {text!r} is not a size such as 24G, 512M or 2000000000 (0 or off: no limit)")
    value = int(float(m.group(1)) * _UNITS[m.group(2)])
    return value or None


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _machine_ram() -> tuple[int, str]:
    try:
        import psutil

        return int(psutil.virtual_memory().total), "RAM"
    except Exception:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "RAM"
    except (AttributeError, ValueError, OSError):
        return FALLBACK_BYTES, "assumed RAM (could not read the machine's)"


def memory_limit(device: torch.device | str | None = None) -> tuple[int | None, str]:
    """``(limit in bytes or None for no limit, where it comes from)`` for work on ``device``."""
    env = os.environ.get(ENV_MAX_MEMORY)
    if env is not None and env.strip():
        try:
            limit = parse_size(env)
        except ValueError as exc:
            raise ValueError(f"{ENV_MAX_MEMORY}: {exc}") from None
        return limit, f"set by {ENV_MAX_MEMORY}={env}"
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        total = int(torch.cuda.get_device_properties(device).total_memory)
        return total, f"the {format_size(total)} of {device}"
    total, what = _machine_ram()
    return int(total * CPU_SHARE), f"{int(CPU_SHARE * 100)}% of this machine's {format_size(total)} {what}"


def _module_bytes(module) -> int:
    if module is None or not hasattr(module, "parameters"):
        return 0
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def estimate_generate_bytes(pipe, width: int, height: int, batch_size: int, cfg: float) -> int:
    """Rough bytes a Generate needs on ``pipe`` (a BasePipeline): weights + activations (see the module doc)."""
    dp = pipe.pipe
    es = torch.tensor([], dtype=pipe.dtype).element_size()
    factor = pipe.vae_scale_factor
    width, height = width or pipe.native_size, height or pipe.native_size
    latent_pixels = (width // factor) * (height // factor)
    weights = sum(_module_bytes(getattr(dp, n, None)) for n in ("unet", "vae", "text_encoder", "text_encoder_2"))
    unet_c0 = int(dp.unet.config.block_out_channels[0])
    vae_c0 = int(dp.vae.config.block_out_channels[0])
    unet_batch = batch_size * (2 if cfg > 1 else 1)
    unet = unet_batch * UNET_FACTOR * unet_c0 * latent_pixels * es
    vae = batch_size * VAE_FACTOR * vae_c0 * width * height * es
    images = batch_size * 3 * width * height * 4 * 2  # the decoded batch and its ComfyUI copy, float32
    return int(weights + unet + vae + images)


def check_generate_memory(pipe, request) -> int:
    """Raise :class:`MemoryLimitExceeded` if ``request`` (a validated GenerateRequest) would need more than the
    limit; returns the estimate."""
    estimate = estimate_generate_bytes(pipe, request.width, request.height, request.batch_size, request.cfg)
    limit, source = memory_limit(getattr(pipe, "device", None))
    if limit is not None and estimate > limit:
        w, h = request.width or pipe.native_size, request.height or pipe.native_size
        raise MemoryLimitExceeded(
            f"needs about {format_size(estimate)} ({w}x{h}, batch {request.batch_size}"
            f"{', guidance doubles the UNet batch' if request.cfg > 1 else ''}), above the memory limit of "
            f"{format_size(limit)} ({source}); lower width, height or batch_size, or {RAISE_HINT}",
            estimate, limit)
    return estimate


def _tensor_bytes(obj, seen: set | None = None) -> int:
    """Bytes of the tensors in ``obj`` (a tensor, or lists/tuples/dicts of them, nested)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def _optimized(params) -> list:
    """The parameters of ``params`` (parameters or optimizer param groups)."""
    out = []
    for item in params:
        if isinstance(item, dict):
            out.extend(item["params"])
        else:
            out.append(item)
    return out


def estimate_training_bytes(objective, params, batch_key: int = 0) -> dict:
    """Rough bytes a training of ``objective`` needs (see the module doc): a dict with ``trainable`` (parameters,
    gradients and AdamW state), ``frozen`` (every other weight of the objective's modules: ``modules()`` and the
    ``nn.Module`` attributes of the objective), ``activations``, ``batch_size`` (the objective's, or None) and
    ``total``. ``params`` are what the optimizer gets (parameters or param groups)."""
    trainable_ids = {id(p) for p in _optimized(params)}
    modules = list(objective.modules().values())
    modules += [v for v in vars(objective).values() if isinstance(v, torch.nn.Module)]
    seen: set[int] = set()
    trainable = frozen = 0
    for p in _optimized(params):
        if id(p) not in seen:
            seen.add(id(p))
            trainable += ADAMW_COPIES * p.numel() * p.element_size()
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) not in seen and id(t) not in trainable_ids:
                seen.add(id(t))
                frozen += t.numel() * t.element_size()
    batch_size = getattr(objective, "batch_size", None)
    if hasattr(objective, "memory_estimate"):
        activations = int(objective.memory_estimate(batch_size))
    else:
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # batches draw from their key; keep RNGs as they were
            activations = TRAIN_ACTIVATION_FACTOR * _tensor_bytes(objective.make_batch(batch_key))
    total = int(trainable + frozen + activations)
    return {"trainable": int(trainable), "frozen": int(frozen), "activations": int(activations),
            "batch_size": batch_size, "total": total}


def check_training_memory(objective, params, device=None, batch_key: int = 0) -> int | None:
    """Raise :class:`MemoryLimitExceeded` before a training starts when its estimate is above the limit; returns the
    estimate (None when the guard is off: no estimate is made, so no batch is built)."""
    limit, source = memory_limit(device)
    if limit is None:
        return None
    est = estimate_training_bytes(objective, params, batch_key)
    if est["total"] > limit:
        batch = f"batch {est['batch_size']}: " if est["batch_size"] is not None else ""
        raise MemoryLimitExceeded(
            f"training needs about {format_size(est['total'])} ({batch}trainable weights with gradients and AdamW "
            f"state {format_size(est['trainable'])}, frozen weights {format_size(est['frozen'])}, activations "
            f"{format_size(est['activations'])}), above the memory limit of {format_size(limit)} ({source}); lower "
            f"the batch size, or {RAISE_HINT}", est["total"], limit)
    return est["total"]
