"""Where node code touches ComfyUI's runtime (progress bar, interrupt flag, editor messages); ComfyUI's model
classes are used only by the native-model nodes (``native_models.py``, ``native_concept.py``).

Outside ComfyUI (headless runner, tests) every function here degrades gracefully, so the same node classes run in
both. Model folders are owned by ``core/paths.py``; ``register_comfy_folders`` wires it to ComfyUI's folder_paths.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterator, Optional

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


LOSS_EVENT = "facesmith.loss"  # the custom event web/facesmith.js draws on the running node
LOSS_SEND_INTERVAL_S = 0.25  # at most four messages a second; every point still arrives (batched)


def _server():
    """ComfyUI's PromptServer instance, or None outside ComfyUI (headless runner, tests)."""
    try:
        from server import PromptServer  # type: ignore  (ComfyUI's top-level module)
    except Exception:
        return None
    return getattr(PromptServer, "instance", None)


def executing_node_id() -> Optional[str]:
    """The id of the node ComfyUI is executing now (None outside ComfyUI)."""
    try:
        from comfy_execution.utils import get_executing_context  # type: ignore

        ctx = get_executing_context()
        if ctx is not None and ctx.node_id is not None:
            return str(ctx.node_id)
    except Exception:
        pass
    server = _server()
    node = getattr(server, "last_node_id", None) if server is not None else None
    return None if node is None else str(node)


def send_to_editor(event: str, data: dict) -> bool:
    """Send ``data`` as ComfyUI websocket event ``event`` to the client that queued the prompt; False (nothing
    sent) outside ComfyUI. Never raises: a chart must not fail a training run."""
    server = _server()
    if server is None:
        return False
    try:
        server.send_sync(event, data, getattr(server, "client_id", None))
    except Exception as exc:  # pragma: no cover - depends on the server's state
        log.debug("FaceSmith: could not send %s: %s", event, exc)
        return False
    return True


def loss_chart_sender(label: str, clock=time.monotonic) -> Callable[[int, int, dict], None]:
    """A ``Progress.on_log`` that streams the loss points to the editor's chart on the running node
    (``{"node", "label", "total", "points": [[step, loss], ...], "reset"}``), batched to LOSS_SEND_INTERVAL_S."""
    node = executing_node_id()
    state = {"pending": [], "last": None, "first": True}

    def on_log(done: int, total: int, values: dict) -> None:
        if "loss" not in values:
            return
        state["pending"].append([int(done), float(values["loss"])])
        now = clock()
        if state["last"] is not None and now - state["last"] < LOSS_SEND_INTERVAL_S and done < total:
            return
        data = {"node": node, "label": label, "total": int(total), "points": state["pending"],
                "reset": state["first"]}
        if send_to_editor(LOSS_EVENT, data):
            state["pending"], state["last"], state["first"] = [], now, False
        else:
            state["pending"] = state["pending"][-1000:]  # no server: keep a bounded tail, nothing else

    return on_log


def node_progress(label: str, loss_chart: bool = False) -> Progress:
    """A Progress for one node execution: ComfyUI's ProgressBar + interrupt inside ComfyUI, tqdm outside.
    ``loss_chart``: training losses also go to the editor's live chart on the node (inside ComfyUI)."""
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

        return Progress(on_update=on_update, should_stop=_comfy_interrupt_flag, label=label,
                        on_log=loss_chart_sender(label) if loss_chart else None)
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
