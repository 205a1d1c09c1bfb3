"""The one Generate path: a frozen base pipeline + any mix of conditioners -> images.

Methods (E4T concepts, identity adapters, instruction edits) never re-implement sampling: each adds a
``Conditioner`` that rewrites the prompt and/or temporarily modifies the pipeline while ``generate`` runs.

Determinism: every image of a batch has its own CPU ``torch.Generator`` seeded ``seed, seed+1, ...`` (mod 2**64), so
image ``i`` of a batch with seed ``s`` is image 0 of a single-image run with seed ``s+i`` (up to float rounding of
batched maths), on any device.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Protocol, runtime_checkable

import torch

from .images import unit_bchw_to_comfy
from .memory import check_generate_memory
from .models import BasePipeline
from .progress import Progress, report

SEED_MAX = 0xFFFF_FFFF_FFFF_FFFF
MAX_SIZE = 8192
MAX_STEPS = 1000
MAX_BATCH = 4096

# name -> (diffusers scheduler class, overrides on top of the pipeline's scheduler config)
SCHEDULERS: dict[str, tuple[Optional[str], dict]] = {
    "default": (None, {}),  # the pipeline's own scheduler, as loaded
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    # DDIM built from a DDPM-style config keeps clip_sample=True and silently clips predicted x0 to [-1, 1]
    "ddim": ("DDIMScheduler", {"clip_sample": False}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
}
SCHEDULER_NAMES = tuple(SCHEDULERS)

# pipeline arguments that generate() owns; conditioners' extra_kwargs may not set them
_RESERVED_KWARGS = frozenset({
    "generator", "num_images_per_prompt", "output_type", "callback_on_step_end",
    "callback_on_step_end_tensor_inputs", "return_dict",
})


@runtime_checkable
class Conditioner(Protocol):
    """What a method hands to ``generate``.

    - ``rewrite_prompt(prompt)``: the prompt with the method's tokens in (e.g. ``"a photo of <c1>"``); the negative
      prompt is not rewritten.
    - ``applied(pipe)``: a context manager that modifies ``pipe`` (adds token embeddings, a LoRA, attention
      processors, ...) on enter and restores it on exit, also on error or interrupt.
    - optional ``extra_kwargs() -> dict``: extra pipeline call arguments (e.g. ``cross_attention_kwargs``), read after
      every conditioner's context was entered. Two conditioners may not set the same argument.
    - optional ``prepare_conditioners(conditioners: list) -> list`` (usually a staticmethod): lets conditioners that
      share something coordinate before anything is applied. ``generate`` calls each distinct hook once (through the
      first conditioner that has it, in list order) with the call's whole list of conditioners, and uses the list it
      returns for the prompt rewrites, ``applied`` and ``extra_kwargs``. A hook replaces only its own kind (e.g. by
      copies at another strength), keeps the order, and never mutates the conditioners it is given: they are the
      caller's objects and are reused by later calls. Example: E4T concepts from one domain encoder apply its
      shared domain LoRA once between them (``Concept.prepare_conditioners``).
    """

    def rewrite_prompt(self, prompt: str) -> str: ...

    def applied(self, pipe: BasePipeline) -> contextlib.AbstractContextManager: ...


class InvalidRequest(ValueError):
    """A bad ``GenerateRequest`` field; ``field`` is the field (and node input) name, ``reason`` the rest."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field} {reason}")
        self.field = field
        self.reason = reason


@dataclass
class GenerateRequest:
    """One text-to-image request. ``width``/``height`` 0 mean the model's native size; ``cfg`` <= 1 turns
    classifier-free guidance off; ``scheduler`` is one of ``SCHEDULER_NAMES``."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    width: int = 0
    height: int = 0
    batch_size: int = 1
    scheduler: str = "default"

    def validate(self) -> "GenerateRequest":
        """Raise ``InvalidRequest`` naming the first bad field; return self."""
        for name in ("prompt", "negative_prompt", "seed", "steps", "batch_size", "cfg", "width", "height",
                     "scheduler"):
            check_field(name, getattr(self, name))
        return self


def check_field(name: str, value: Any) -> None:
    """Check one ``GenerateRequest`` field on its own (what node validation can do before anything runs); raises
    ``InvalidRequest``."""
    if name in ("prompt", "negative_prompt"):
        if not isinstance(value, str):
            raise InvalidRequest(name, f"must be text, got {type(value).__name__}")
    elif name in _INT_RANGES:
        _check_int(name, value, *_INT_RANGES[name])
        if name in ("width", "height") and value % 8:
            raise InvalidRequest(name, f"must be a multiple of 8, got {value}")
    elif name == "cfg":
        # NaN passes every comparison-based range check, so finiteness is checked first
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 100:
            raise InvalidRequest("cfg", f"must be a number from 0 to 100, got {value!r}")
    elif name == "scheduler":
        if value not in SCHEDULERS:
            raise InvalidRequest("scheduler", f"must be one of {', '.join(SCHEDULER_NAMES)}, got {value!r}")
    else:
        raise KeyError(f"GenerateRequest has no field {name!r}")


_INT_RANGES = {"seed": (0, SEED_MAX), "steps": (1, MAX_STEPS), "batch_size": (1, MAX_BATCH), "width": (0, MAX_SIZE),
               "height": (0, MAX_SIZE)}


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidRequest(name, f"must be from {lo} to {hi}, got {value}")


def make_scheduler(name: str, config):
    """A fresh scheduler ``name`` built from ``config`` (keeps prediction_type, betas, timestep spacing ...)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    class_name, overrides = SCHEDULERS[name]
    if class_name is None:
        raise ValueError("'default' means the pipeline's own scheduler; there is nothing to build")
    return getattr(diffusers, class_name).from_config(config, **overrides)


def seeds_for(request: GenerateRequest) -> list[int]:
    """The per-image seeds of a request: ``seed, seed+1, ...`` modulo 2**64."""
    return [(request.seed + i) & SEED_MAX for i in range(request.batch_size)]


def _as_conditioners(conditioners: Iterable) -> list:
    out = []
    for i, c in enumerate(conditioners or ()):
        if not isinstance(c, Conditioner):
            raise TypeError(
                f"conditioner #{i} ({type(c).__name__}) does not implement rewrite_prompt(prompt) and applied(pipe)"
            )
        out.append(c)
    return out


def _prepared(conditioners: list) -> list:
    """``conditioners`` after every distinct ``prepare_conditioners`` hook (see ``Conditioner``) ran once."""
    seen = set()
    for c in list(conditioners):  # the caller's conditioners choose the hooks; replacements add none
        hook = getattr(c, "prepare_conditioners", None)
        if not callable(hook):
            continue
        key = getattr(hook, "__func__", hook)
        if key in seen:
            continue
        seen.add(key)
        result = hook(list(conditioners))
        if not isinstance(result, (list, tuple)):
            raise TypeError(f"{type(c).__name__}.prepare_conditioners returned {type(result).__name__}, not a list")
        conditioners = _as_conditioners(result)
    return conditioners


def _extra_kwargs(conditioners: list) -> dict:
    merged: dict = {}
    owner: dict = {}
    for c in conditioners:
        extra_fn = getattr(c, "extra_kwargs", None)
        extra = extra_fn() if callable(extra_fn) else {}
        for key, value in (extra or {}).items():
            if key in _RESERVED_KWARGS:
                raise ValueError(f"{type(c).__name__}.extra_kwargs() may not set {key!r} (generate sets it)")
            if key in merged:
                raise ValueError(
                    f"{type(owner[key]).__name__} and {type(c).__name__} both set pipeline argument {key!r}; "
                    "these two cannot be combined in one Generate"
                )
            merged[key] = value
            owner[key] = c
    return merged


@contextlib.contextmanager
def _scheduler_swapped(pipe, name: str):
    if name == "default":
        yield
        return
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(name, original.config)
    try:
        yield
    finally:
        pipe.scheduler = original


def generate(
    pipe: BasePipeline,
    request: GenerateRequest,
    conditioners: Iterable[Conditioner] = (),
    progress: Optional[Progress] = None,
) -> torch.Tensor:
    """Run ``request`` on ``pipe`` with ``conditioners`` applied; returns ComfyUI IMAGE ``(B, H, W, 3)`` float32 in
    [0, 1] on the CPU. ``progress`` gets one update per denoising step and may raise ``Interrupted``."""
    request.validate()
    check_generate_memory(pipe, request)  # before anything is allocated (MemoryLimitExceeded)
    conditioners = _prepared(_as_conditioners(conditioners))
    width = request.width or pipe.native_size
    height = request.height or pipe.native_size
    prompt = request.prompt
    for c in conditioners:
        prompt = c.rewrite_prompt(prompt)
        if not isinstance(prompt, str):
            raise TypeError(f"{type(c).__name__}.rewrite_prompt returned {type(prompt).__name__}, not text")

    def on_step_end(p, step: int, timestep, callback_kwargs: dict) -> dict:
        report(progress, step + 1, int(getattr(p, "num_timesteps", 0) or request.steps))
        return callback_kwargs

    if progress is not None:
        progress.check()
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds_for(request)]
    dp = pipe.pipe
    with contextlib.ExitStack() as stack:
        for c in conditioners:
            stack.enter_context(c.applied(pipe))
        stack.enter_context(_scheduler_swapped(dp, request.scheduler))
        kwargs = dict(
            prompt=prompt,
            negative_prompt=request.negative_prompt or None,
            num_inference_steps=request.steps,
            guidance_scale=float(request.cfg),
            width=width,
            height=height,
            num_images_per_prompt=request.batch_size,
            generator=generators,
            output_type="pt",
            callback_on_step_end=on_step_end,
        )
        kwargs.update(_extra_kwargs(conditioners))
        images = dp(**kwargs).images
    return unit_bchw_to_comfy(images)
