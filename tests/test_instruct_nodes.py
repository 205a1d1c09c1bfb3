"""The instruction-model nodes (issue 16, MIGE): load, multimodal instruction, generate/edit and train, on a tiny
random-weight SD1.5 and an UNTRAINED instruction model (``new_model``): these tests check the nodes' mechanics (types,
shapes, sizes, which input an error names, queue-time checks, checkpoints); the shipped model's quality is measured
by its benchmark."""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

import tiny_models  # noqa: F401  (registers the pack as ``facesmith`` and caps torch at one thread)

MODEL = "instruct/untrained.safetensors"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(tiny base, untrained instruction model saved as MODEL under a models dir of its own, that models dir)."""
    from facesmith.core import paths
    from facesmith.core.identity.face_encoder import FaceEncoder
    from facesmith.core.instruct.model import new_model
    from facesmith.core.models import as_base_pipeline

    root = tmp_path_factory.mktemp("models")
    bp = as_base_pipeline(tiny_models.build_tiny_sd15(seed=0), name="tiny")
    model = new_model(bp, FaceEncoder.load(), seed=0)
    with torch.no_grad():  # an untrained model's source channels are zero; make the source matter
        model.source_weight.normal_(0, 0.1)
    model.save(root / "facesmith" / MODEL)
    paths.set_models_dir(root)
    try:
        yield bp, model, root
    finally:
        paths.set_models_dir(None)


def _image(h, w, seed=0):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _instruction(text, **images):
    from facesmith.nodes.instruct_nodes import FaceSmithMultimodalInstruction

    return FaceSmithMultimodalInstruction().build(text, **images)[0]


def _run(bp, model, instruction, source="image1", batch_size=1, **kw):
    from facesmith.nodes.instruct_nodes import FaceSmithInstructGenerate

    args = dict(text_guidance=3.0, image_guidance=1.5, steps=2, seed=0, batch_size=batch_size, scheduler="dpmpp_2m",
                weight=1.0)
    args.update(kw)
    return FaceSmithInstructGenerate().run(bp, model, instruction, source, **args)


def test_load_lists_loads_and_knows_when_the_file_changed(world, monkeypatch):
    from facesmith.core import paths
    from facesmith.core.instruct.model import InstructModel
    from facesmith.nodes.instruct_nodes import BUILTIN_MODEL, FaceSmithLoadInstructModel, list_instruct_models

    bp, model, root = world
    load = FaceSmithLoadInstructModel
    assert MODEL in list_instruct_models()
    choices = load.INPUT_TYPES()["required"]["model"][0]
    assert MODEL in choices and BUILTIN_MODEL in choices  # the built-in name stays listed for shipped workflows
    res = load().load(MODEL)
    loaded, = res["result"]
    assert isinstance(loaded, InstructModel) and loaded.model_id == model.model_id
    assert "subject_generation, instruction_edit, subject_edit" in res["ui"]["text"][0]
    first = load.IS_CHANGED(MODEL)
    assert load.IS_CHANGED(MODEL) == first
    other = dataclasses.replace(model, info=dict(model.info, steps=1))
    other.save(root / "facesmith" / MODEL, overwrite=True)
    assert load.IS_CHANGED(MODEL) != first  # rewritten under the same name: read again
    model.save(root / "facesmith" / MODEL, overwrite=True)
    with pytest.raises(ValueError, match=r"Load Instruction Model \(FaceSmith\): input 'model'"):
        load().load("instruct/nope.safetensors")
    monkeypatch.setattr(paths, "_builtin_roots", [root / "no-builtin"])
    with pytest.raises(ValueError, match="facesmith train instruct"):
        load().load(BUILTIN_MODEL)


LINKED = {"image1": "IMAGE"}


def test_instruction_queue_time_checks():
    """VALIDATE_INPUTS gets what ComfyUI 0.3.64 passes (checked against its execution.validate_inputs): the text,
    and the linked inputs' types as ``input_types`` (a connected image is listed there)."""
    from facesmith.nodes.instruct_nodes import FaceSmithMultimodalInstruction

    v = FaceSmithMultimodalInstruction.VALIDATE_INPUTS
    assert v(instruction="make <image1> smiling", input_types=LINKED) is True
    assert v(instruction="give <image1> the glasses of <image2>",
             input_types={"image1": "IMAGE", "image2": "IMAGE"}) is True
    assert "input 'image2' the instruction names <image2> but no image2" in \
        v(instruction="give <image1> the glasses of <image2>", input_types=LINKED)
    assert "input 'image3' image3 is connected but the instruction never names <image3>" in \
        v(instruction="make <image1> smiling", input_types={"image1": "IMAGE", "image3": "IMAGE"})
    assert "input 'instruction' is empty" in v(instruction="  ", input_types=LINKED)
    assert "input 'instruction'" in v(instruction="make <image5> smiling", input_types=LINKED)
    assert "input 'image1' is linked to a STRING output" in v(instruction="make <image1> smiling",
                                                              input_types={"image1": "STRING"})
    assert v(instruction=None, input_types=LINKED) is True  # a linked instruction is checked when the node runs
    assert v(instruction="make <image1> smiling") is True  # without the link types: the text on its own
    assert "input 'instruction'" in v(instruction="make it smiling")


def test_instruction_refused_by_the_headless_runner_before_anything_runs():
    from facesmith.core.runner.validate import check
    from facesmith.nodes.instruct_nodes import FaceSmithMultimodalInstruction
    from facesmith.nodes.synthface_nodes import FaceSmithSynthFace

    classes = {"FaceSmithSynthFace": FaceSmithSynthFace,
               "FaceSmithMultimodalInstruction": FaceSmithMultimodalInstruction}
    render = {"class_type": "FaceSmithSynthFace", "inputs": {}}

    def errors(text, *images):
        prompt = {"1": render, "2": {"class_type": "FaceSmithMultimodalInstruction",
                                     "inputs": dict({"instruction": text}, **{f"image{k}": ["1", 0] for k in images})}}
        return [e.message for e in check(prompt, classes)[1] if e.node_id == "2"]

    assert errors("give <image1> the hat of <image2>", 1, 2) == []
    assert any("input 'image2'" in m for m in errors("give <image1> the hat of <image2>", 1))
    assert any("input 'image3'" in m for m in errors("make <image1> smiling", 1, 3))


def test_instruction_node_checks_at_execution():
    from facesmith.nodes.instruct_nodes import MultimodalInstruction

    a, b = _image(24, 40), _image(16, 16, 1)
    ins = _instruction("give <image1> the glasses of <image2>", image1=a, image2=b)
    assert isinstance(ins, MultimodalInstruction) and sorted(ins.images) == [1, 2]
    assert ins.instruction.images == (1, 2) and ins.images[1].shape == (1, 24, 40, 3)
    node = r"Multimodal Instruction \(FaceSmith\): input "
    with pytest.raises(ValueError, match=node + "'image2' the instruction names <image2> but no image2"):
        _instruction("give <image1> the glasses of <image2>", image1=a)
    with pytest.raises(ValueError, match=node + "'image3' image3 is connected but"):
        _instruction("make <image1> smiling", image1=a, image3=b)
    with pytest.raises(ValueError, match=node + "'instruction' is empty"):
        _instruction("", image1=a)
    with pytest.raises(ValueError, match=node + "'image1' holds 2 images"):
        _instruction("make <image1> smiling", image1=torch.rand(2, 16, 16, 3))


def test_edit_keeps_the_source_size_and_generation_uses_the_native_size(world):
    bp, model, _ = world
    src = _image(24, 40)  # not square, not the native 16 px
    edit = _instruction("make <image1> smiling", image1=src)
    res = _run(bp, model, edit, "image1")
    out, = res["result"]
    assert out.shape == (1, 24, 40, 3) and out.dtype == torch.float32 and 0 <= out.min() <= out.max() <= 1
    assert "instruction edit" in res["ui"]["text"][0] and "24" in res["ui"]["text"][0]
    same, = _run(bp, model, edit, "image1")["result"]
    assert torch.equal(out, same)  # same seed and settings, same image
    subject = _instruction("give <image1> the glasses of <image2>", image1=src, image2=_image(16, 16, 1))
    edited2, = _run(bp, model, subject, "image2")["result"]
    assert edited2.shape == (1, 16, 16, 3)  # the edited image is image2: its size
    gen = _run(bp, model, _instruction("a photo of <image1>, wearing a hat", image1=src), "none (generate)",
               batch_size=2)
    assert gen["result"][0].shape == (2, bp.native_size, bp.native_size, 3)
    assert "subject generation" in gen["ui"]["text"][0] and "note" not in gen["ui"]["text"][0]
    edit_only = dataclasses.replace(model, info=dict(model.info, tasks=["instruction_edit"]))
    noted = _run(bp, edit_only, _instruction("a photo of <image1>", image1=src), "none (generate)")
    assert "trained for instruction_edit only" in noted["ui"]["text"][0]
    with pytest.raises(ValueError, match=r"input 'source' is image3, but the instruction has no image3"):
        _run(bp, model, edit, "image3")


def test_model_for_another_base_is_refused_naming_both(world):
    bp, model, _ = world
    other = dataclasses.replace(model, base_name="other-base", base_fingerprint="0123456789abcdef")
    ins = _instruction("make <image1> smiling", image1=_image(16, 16))
    with pytest.raises(ValueError, match=r"input 'instruct_model'.*other-base.*0123456789abcdef.*tiny") as info:
        _run(bp, other, ins)
    assert bp.fingerprint in str(info.value)
    with pytest.raises(ValueError, match="input 'pipeline'"):
        _run(object(), model, ins)


def test_generate_queue_time_checks():
    from facesmith.nodes.instruct_nodes import FaceSmithInstructGenerate

    v = FaceSmithInstructGenerate.VALIDATE_INPUTS
    assert v(text_guidance=3.0, image_guidance=1.5, weight=1.0, batch_size=1) is True and v() is True
    assert "input 'text_guidance'" in v(text_guidance=float("nan"))
    assert "input 'image_guidance'" in v(image_guidance=float("inf"))
    assert "input 'weight'" in v(weight=9.0)
    assert "input 'batch_size'" in v(batch_size=0)


def test_train_node_cancel_resume_save_and_load(world, monkeypatch):
    """Two steps, cancelled at step 2 of 4 (ComfyUI's interrupt through its progress hook): a checkpoint of step 2
    is kept; the same node again resumes there, streams the loss chart, saves, and the file loads and is listed."""
    from test_comfy_bridge import FakeComfy

    from facesmith.core.progress import Interrupted
    from facesmith.nodes.instruct_nodes import FaceSmithLoadInstructModel, FaceSmithTrainInstructModel

    bp, _, root = world
    fake = FakeComfy()
    for name, mod in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    train = FaceSmithTrainInstructModel()
    args = dict(pipeline=bp, tasks="joint", per_task=2, steps=4, batch_size=2, learning_rate=1e-3, seed=0,
                resume=True, name="tiny-instruct", overwrite=False)
    fake.interrupt_at, fake.interrupt_total = 2, 4  # the training bar (not the encode one)
    with pytest.raises(fake.mm.InterruptProcessingException) as info:
        train.train(**args)
    assert isinstance(info.value.__cause__, Interrupted)
    work = root / "facesmith" / ".work" / "instruct" / "tiny-instruct"
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((work / "checkpoint-2" / "state.json").read_text())["step"] == 2
    fake.interrupt_at = None
    fake.sent.clear()
    res = train.train(**args)
    model, graph, path = res["result"]
    assert path.endswith("instruct/tiny-instruct.safetensors") and "resumed from step 2" in res["ui"]["text"][0]
    assert model.info["steps"] == 4 and model.tasks == ("subject_generation", "instruction_edit", "subject_edit")
    assert graph.dim() == 4 and graph.shape[0] == 1 and graph.shape[-1] == 3
    points = [p for e, d, _ in fake.sent if e == "facesmith.loss" for p in d["points"]]
    assert [p[0] for p in points] == [3, 4]
    loaded, = FaceSmithLoadInstructModel().load("instruct/tiny-instruct.safetensors")["result"]
    assert loaded.model_id == model.model_id and loaded.info["steps"] == 4
    with pytest.raises(ValueError, match=r"Train Instruction Model \(FaceSmith\): input 'name'.*overwrite"):
        train.train(**args)
    assert "input 'name'" in FaceSmithTrainInstructModel.VALIDATE_INPUTS(name="../../evil")
    assert FaceSmithTrainInstructModel.VALIDATE_INPUTS(name="ok") is True
    single, _, _ = train.train(**dict(args, tasks="instruction_edit", steps=1, name="edit-only"))["result"]
    assert single.tasks == ("instruction_edit",)


def test_generate_applies_connected_concepts_with_the_token_after_image1(world):
    """Instruct Generate's optional concepts (e.g. Apply Identity of the person in image1) run on the same Generate
    call; a concept's token goes right after <image1> unless the instruction writes it; a non-conditioning is
    refused naming the input."""
    import contextlib

    bp, model, _ = world
    seen = []

    class Recorder:  # a FaceSmith conditioning that changes nothing and records what it was given
        token = "<rec>"

        def rewrite_prompt(self, prompt):
            seen.append(prompt)
            return prompt.replace(self.token, "person")

        @contextlib.contextmanager
        def applied(self, pipe):
            seen.append("applied")
            yield

    ins = _instruction("a photo of <image1>, smiling", image1=_image(64, 64))
    plain = _run(bp, model, ins, source="none (generate)")["result"][0]
    out = _run(bp, model, ins, source="none (generate)", concepts=Recorder())["result"][0]
    assert out.shape == plain.shape
    assert "applied" in seen and any(p.endswith("#3, <rec>, smiling") for p in seen if p != "applied")  # image1's 4 words
    seen.clear()
    written = _instruction("a photo of <image1> and <rec>", image1=_image(64, 64))
    _run(bp, model, written, source="none (generate)", concepts=[Recorder()])
    assert any(p.endswith("and <rec>") and p.count("<rec>") == 1 for p in seen if p != "applied")
    with pytest.raises(ValueError, match=r"Instruct Generate/Edit \(FaceSmith\): input 'concepts'"):
        _run(bp, model, ins, source="none (generate)", concepts="not a conditioning")
