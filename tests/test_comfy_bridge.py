"""The node layer's bridge to ComfyUI (``nodes/comfy_bridge.py``) against a stand-in of the few ComfyUI modules it
touches, built here the way ComfyUI behaves (v0.3.64): ``comfy.utils.ProgressBar.update_absolute`` calls the server's
progress hook, and that hook calls ``comfy.model_management.throw_exception_if_processing_interrupted()``, which
clears the flag and raises ``InterruptProcessingException``, before the pack's own interrupt check ever runs.

The real ComfyUI runs of the same paths are in ``tests/test_comfyui_integration.py`` (skipped without one).
"""
from __future__ import annotations

import importlib
import json
import sys
import types

import pytest

import tiny_models  # noqa: F401  (registers the pack as ``facesmith`` and caps torch at one thread)


class FakeComfy:
    """``comfy``, ``comfy.utils`` and ``comfy.model_management`` as far as the bridge uses them."""

    def __init__(self):
        self.flag = False
        self.interrupt_at = None  # the user presses Cancel when a bar reaches this value ...
        self.interrupt_total = None  # ... (of a bar with this total, if set)
        self.values = []

        class InterruptProcessingException(Exception):
            pass

        mm = types.ModuleType("comfy.model_management")
        mm.InterruptProcessingException = InterruptProcessingException
        mm.processing_interrupted = lambda: self.flag

        def throw_exception_if_processing_interrupted():
            if self.flag:
                self.flag = False
                raise InterruptProcessingException()

        mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted

        def hook(value, total, preview, node_id=None):  # main.py hijack_progress: the interrupt check comes first
            if self.interrupt_at is not None and value >= self.interrupt_at \
                    and self.interrupt_total in (None, total):
                self.flag = True
            throw_exception_if_processing_interrupted()
            self.values.append((value, total))

        utils = types.ModuleType("comfy.utils")

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.current = total, 0

            def update_absolute(self, value, total=None, preview=None):
                self.total = total if total is not None else self.total
                self.current = min(value, self.total)
                hook(self.current, self.total, preview)

        utils.ProgressBar = ProgressBar
        comfy = types.ModuleType("comfy")
        comfy.__path__ = []
        comfy.utils, comfy.model_management = utils, mm
        # server.PromptServer.instance.send_sync and comfy_execution.utils.get_executing_context (node id "7")
        self.sent = []
        server = types.ModuleType("server")

        class PromptServer:
            instance = None
            client_id = "client-1"
            last_node_id = None

            def send_sync(inner, event, data, sid=None):
                self.sent.append((event, data, sid))

        PromptServer.instance = PromptServer()
        server.PromptServer = PromptServer
        execution = types.ModuleType("comfy_execution")
        execution.__path__ = []
        exec_utils = types.ModuleType("comfy_execution.utils")
        exec_utils.get_executing_context = lambda: types.SimpleNamespace(node_id="7", prompt_id="p")
        execution.utils = exec_utils
        self.modules = {"comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm, "server": server,
                        "comfy_execution": execution, "comfy_execution.utils": exec_utils}
        self.mm = mm


@pytest.fixture
def fake_comfy(monkeypatch):
    fake = FakeComfy()
    for name, mod in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return fake


def test_comfy_progress_hook_interrupt_becomes_the_engines(fake_comfy):
    from facesmith.core.progress import Interrupted
    from facesmith.nodes.comfy_bridge import interruptible, node_progress

    progress = node_progress("job")
    progress.update(1, 5)
    fake_comfy.interrupt_at = 2
    with pytest.raises(Interrupted, match="job interrupted at step 2"):
        progress.update(2, 5)
    assert fake_comfy.values == [(1, 5)] and not fake_comfy.flag
    with pytest.raises(fake_comfy.mm.InterruptProcessingException):  # ComfyUI reports a cancel, not an error
        with interruptible():
            raise Interrupted("x")


def test_cancelled_train_domain_encoder_node_keeps_the_step_reached(fake_comfy, tmp_path):
    """Cancel at step 4 of 12 (the node checkpoints every 10): checkpoint-4 is written, the node raises ComfyUI's
    interrupt, and the next run of the same node resumes from step 4."""
    from facesmith.core import paths
    from facesmith.core.progress import Interrupted
    from test_concept import _base

    nodes = importlib.import_module("facesmith.nodes.concept_nodes")
    base = _base(0)
    args = (base, "synthface", "", 3, 2, 12, 4, 1e-3, 2, 1e-2, 1e-3, 0, "no", False, True, "cancelled", False)
    paths.set_models_dir(tmp_path / "models")
    try:
        fake_comfy.interrupt_at, fake_comfy.interrupt_total = 4, 12  # the training bar (not the encode one)
        with pytest.raises(fake_comfy.mm.InterruptProcessingException) as info:
            nodes.FaceSmithTrainDomainEncoder().train(*args)
        assert isinstance(info.value.__cause__, Interrupted)
        work = tmp_path / "models" / "facesmith" / ".work" / "e4t" / "cancelled"
        assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-4"]
        assert json.loads((work / "checkpoint-4" / "state.json").read_text())["step"] == 4
        fake_comfy.interrupt_at = None
        fake_comfy.values.clear()
        fake_comfy.sent.clear()
        res = nodes.FaceSmithTrainDomainEncoder().train(*args)
        path = res["result"][2]
        assert "resumed from step 4" in res["ui"]["text"][0]
        train_values = [v for v, total in fake_comfy.values if total == 12]
        assert train_values[0] == 4 and train_values[-1] == 12, train_values  # resumed at the step reached
        assert (work / "checkpoint-12").is_dir() and path.endswith("cancelled.safetensors")
        # the live loss chart: every step's loss reached the client that queued the prompt, for node 7, in order
        charts = [d for e, d, sid in fake_comfy.sent if e == "facesmith.loss" and sid == "client-1"]
        assert charts and all(d["node"] == "7" and d["total"] == 12 for d in charts)
        assert [d["reset"] for d in charts] == [True] + [False] * (len(charts) - 1)
        points = [p for d in charts for p in d["points"]]
        assert [p[0] for p in points] == list(range(5, 13))
        assert f"last loss {points[-1][1]:.4g}" in res["ui"]["text"][0]
    finally:
        paths.set_models_dir(None)
