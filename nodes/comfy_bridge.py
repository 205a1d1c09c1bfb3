"""The only place where node code touches ComfyUI internals (progress bar, interrupt flag).

Outside ComfyUI (headless runner, tests) every function here degrades gracefully, so the same node classes run in
both. Model folders are owned by ``core/paths.py``; ``register_comfy_folders`` wires it to ComfyUI's folder_paths.
"""
from __future__ import annotations

import logging
import contextlib
from typing import Iterator, Optional

import torch

from ..core.progress import Interrupted, Progress, headless_progress_factory

log = logging.getLogger("facesmith")


def _comfy_interrupt_flag() -> bool:
    try:
        import comfy.model_management as mm  # type: ignore
    except Exception:
        return False
    try:
        mm.throw_exception_if_processing_interrupted()
    except Exception:
        return True
    return False


def node_progress(label: str) -> Progress:
    """A Progress for one node execution: ComfyUI's ProgressBar + interrupt inside ComfyUI, tqdm outside."""
    try:
        import comfy.utils  # type: ignore

        import comfy.model_management as mm  # type: ignore

        bars = {}

        def on_update(done: int, total: int) -> None:
            if "bar" not in bars:
                bars["bar"] = comfy.utils.ProgressBar(total)
            try:
                bars["bar"].update_absolute(done, total)
            except mm.InterruptProcessingException as exc:
                # ComfyUI's progress hook checks (and clears) the interrupt flag itself, before the engine's own
                # check: told in the engine's words, so a training loop saves the step reached before it stops;
                # ``interruptible`` turns it back into ComfyUI's exception at the node's edge.
                raise Interrupted(f"{label} interrupted at step {done}") from exc

        return Progress(on_update=on_update, should_stop=_comfy_interrupt_flag, label=label)
    except Exception:
        pass
    factory = headless_progress_factory()  # the headless runner's (core/progress.py), so nodes report there too
    if factory is not None:
        return factory(label)
    return Progress(label=label)


def raise_if_interrupted() -> None:
    if _comfy_interrupt_flag():
        raise Interrupted("interrupted")


class interruptible:
    """Context manager for node bodies: an engine ``Interrupted`` (raised after the engine saved what it could,
    e.g. a training checkpoint) becomes ComfyUI's own InterruptProcessingException inside ComfyUI, so ComfyUI
    reports a cancel rather than an error; outside ComfyUI it propagates unchanged (the runner exits 130)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, Interrupted):
            try:
                import comfy.model_management as mm  # type: ignore
            except Exception:
                return False
            raise mm.InterruptProcessingException() from exc
        return False


@contextlib.contextmanager
def grad_enabled() -> Iterator[None]:
    """For node bodies that create trainable state or train (load a base model, train an encoder, tune a concept).

    ComfyUI (and the headless runner, like it) executes nodes under ``torch.inference_mode()``; tensors made there
    can never take part in autograd later. Inside this block they are ordinary tensors and gradients are on.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield
