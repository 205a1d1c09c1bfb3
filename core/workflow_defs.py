"""The shipped workflows, defined once here and written as UI format (``workflows/*.json``, what ComfyUI's template
browser lists) plus their API-format twins (``workflows/api/*.json``, for ComfyUI's /prompt and `facesmith run`).

``python -m facesmith.core.workflow_defs`` rewrites the files; ``tests/test_workflows.py`` checks that the files on
disk are exactly what these definitions produce, so the two formats never drift apart.
"""
from __future__ import annotations

import json
from pathlib import Path

from .runner.ui_builder import UINode as N
from .runner.ui_builder import build_ui_workflow

PACK_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = PACK_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"

BASE = "diffusers/synthface-base"
ENCODER = "e4t/synthface-e4t.safetensors"
REFERENCE = dict(identity=18, hair="brown", expression="neutral", glasses="no", hat="no", beard="no",
                 background="gray", size=64, view=1)


def _generate(id_, pos, prompt, links, batch=4, seed=0):
    return N(id_, "FaceSmithGenerate", dict(prompt=prompt, negative_prompt="", seed=seed, steps=20, cfg=3.0,
                                            width=0, height=0, batch_size=batch, scheduler="dpmpp_2m"), links, pos)


def text_to_image() -> list[N]:
    """Generate faces from text with the built-in base model, save them, and let the judges check the prompt."""
    prompt = "a photo of a person, with red hair, smiling, wearing glasses, on a blue background"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        _generate(2, (420, 80), prompt, {"pipeline": (1, 0)}),
        N(3, "SaveImage", dict(filename_prefix="facesmith/text_to_image"), {"images": (2, 0)}, (820, 80)),
        N(4, "FaceSmithJudgeFaces", dict(prompt=prompt), {"images": (2, 0)}, (820, 420)),
    ]


def e4t_personalize() -> list[N]:
    """One reference face -> a concept (E4T encoder + 10 tuning steps) -> variations by prompt; saves the concept
    as a ComfyUI embedding + LoRA and judges likeness to the reference."""
    prompt = "a photo of <fs-person>, wearing a hat, with blue hair"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        N(2, "FaceSmithLoadDomainEncoder", dict(encoder=ENCODER), {}, (40, 300)),
        N(3, "FaceSmithSynthFace", dict(REFERENCE), {}, (40, 460), title="Reference (held-out identity 18)"),
        N(4, "FaceSmithEmbedConcept", dict(method="e4t", token="<fs-person>", steps=15, learning_rate=_tuning_lr(),
                                           face_crop=False, seed=0),
          {"pipeline": (1, 0), "image": (3, 0), "encoder": (2, 0)}, (420, 300)),
        _generate(5, (820, 80), prompt, {"pipeline": (1, 0), "concepts": (4, 0)}),
        N(6, "SaveImage", dict(filename_prefix="facesmith/e4t_personalize"), {"images": (5, 0)}, (1220, 80)),
        N(7, "SaveImage", dict(filename_prefix="facesmith/e4t_reference"), {"images": (3, 0)}, (420, 620)),
        N(8, "FaceSmithSaveConcept", dict(name="fs-person-demo", overwrite=True), {"concepts": (4, 0)}, (820, 520)),
        N(9, "FaceSmithJudgeFaces", dict(prompt=prompt), {"images": (5, 0), "reference": (3, 0)}, (1220, 420)),
    ]


def _tuning_lr() -> float:
    from .concept.personalize import DEFAULT_TUNING_LR

    return DEFAULT_TUNING_LR


def e4t_train_domain_encoder() -> list[N]:
    """Train a (small, quick) E4T domain encoder on SynthFace training identities, show the loss graph, and use it
    at once on a held-out face."""
    prompt = "a photo of <fs-person>, wearing a hat, with blue hair"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        N(2, "FaceSmithTrainDomainEncoder", dict(name="demo-e4t", dataset="synthface", synthface_identities=64,
                                                 synthface_views=2, steps=40, batch_size=8, seed=0, resume=False,
                                                 overwrite=True),
          {"pipeline": (1, 0)}, (420, 80)),
        N(3, "SaveImage", dict(filename_prefix="facesmith/e4t_loss"), {"images": (2, 1)}, (820, 80)),
        N(4, "FaceSmithSynthFace", dict(REFERENCE), {}, (40, 460), title="Reference (held-out identity 18)"),
        N(5, "FaceSmithEmbedConcept", dict(method="e4t", token="<fs-person>", steps=5, learning_rate=_tuning_lr(),
                                           face_crop=False, seed=0),
          {"pipeline": (1, 0), "image": (4, 0), "encoder": (2, 0)}, (420, 460)),
        _generate(6, (820, 460), prompt, {"pipeline": (1, 0), "concepts": (5, 0)}),
        N(7, "SaveImage", dict(filename_prefix="facesmith/e4t_trained_now"), {"images": (6, 0)}, (1220, 460)),
    ]


FACE_MODEL = "understand/synthface-unified-moe.safetensors"


def _load_face_model(id_, pos):
    return N(id_, "FaceSmithLoadFaceModel", dict(backend="unified", model=FACE_MODEL, vlm_folder="", lora="none",
                                                 device="cpu"), {}, pos)


def understand_describe_photo() -> list[N]:
    """Look at a face and say what is seen: a caption, answers to questions, and every attribute with its
    confidence (JSON + table). The SynthFace render stands in for a photo: replace it with Load Image."""
    return [
        N(1, "FaceSmithSynthFace", dict(REFERENCE), {}, (40, 80), title="Photo (held-out identity 18; use Load Image)"),
        _load_face_model(2, (40, 420)),
        N(3, "FaceSmithFaceDescribe", dict(max_new_tokens=90, keep_model_loaded=True),
          {"images": (1, 0), "face_model": (2, 0)}, (420, 80)),
        N(4, "FaceSmithFaceVQA", dict(question="What colour is the hair?", max_new_tokens=8, seed=0,
                                      keep_model_loaded=True), {"images": (1, 0), "face_model": (2, 0)}, (420, 300)),
        N(5, "FaceSmithFaceVQA", dict(question="Where is the mole?", max_new_tokens=8, seed=0,
                                      keep_model_loaded=True), {"images": (1, 0), "face_model": (2, 0)}, (420, 520)),
        N(6, "FaceSmithFaceAttributes", dict(keep_model_loaded=True), {"images": (1, 0), "face_model": (2, 0)},
          (820, 80)),
        N(7, "SaveImage", dict(filename_prefix="facesmith/understand_table"), {"images": (6, 1)}, (1220, 80)),
    ]


def understand_generate_check() -> list[N]:
    """Generate from a prompt, read the faces' attributes, and check them against the prompt (pass/fail + reasons),
    so a graph verifies its own outputs; a question about the whole batch gets one answer per image."""
    prompt = "a photo of a person, with red hair, smiling, wearing glasses, on a blue background"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        _generate(2, (420, 80), prompt, {"pipeline": (1, 0)}),
        N(3, "SaveImage", dict(filename_prefix="facesmith/generate_check"), {"images": (2, 0)}, (820, 80)),
        _load_face_model(4, (40, 420)),
        N(5, "FaceSmithFaceAttributes", dict(keep_model_loaded=True), {"images": (2, 0), "face_model": (4, 0)},
          (820, 420)),
        N(6, "FaceSmithCheckAttributes", dict(prompt=prompt, min_confidence=0.5), {"attributes_json": (5, 0)},
          (1220, 420)),
        N(7, "FaceSmithFaceVQA", dict(question="Is the person wearing glasses?", max_new_tokens=8, seed=0,
                                      keep_model_loaded=True), {"images": (2, 0), "face_model": (4, 0)}, (820, 720)),
    ]


WORKFLOWS = {
    "synthface_text_to_image": text_to_image,
    "e4t_personalize": e4t_personalize,
    "e4t_train_domain_encoder": e4t_train_domain_encoder,
    "understand_describe_photo": understand_describe_photo,
    "understand_generate_check": understand_generate_check,
}


def render_all(node_classes: dict) -> dict[str, tuple[dict, dict]]:
    """name -> (UI workflow, API prompt)."""
    from .runner import to_api

    out = {}
    for name, make in WORKFLOWS.items():
        ui = build_ui_workflow(make(), node_classes)
        out[name] = (ui, to_api(ui, node_classes))
    return out


def write_all() -> list[Path]:
    from .formats import atomic_write_text
    from .runner.command import load_node_classes

    classes, problem = load_node_classes()
    if problem:
        raise RuntimeError(problem)
    written = []
    for name, (ui, api) in render_all(classes).items():
        for path, data in ((WORKFLOWS_DIR / f"{name}.json", ui), (API_DIR / f"{name}.json", api)):
            atomic_write_text(path, json.dumps(data, indent=2) + "\n", overwrite=True)
            written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover
    for p in write_all():
        print(p)
