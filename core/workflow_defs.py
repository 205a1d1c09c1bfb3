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
ADAPTER = "identity/synthface-idadapter.safetensors"
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
    """One reference face -> described by the face model -> a concept (E4T encoder + 10 tuning steps on a caption
    naming the photo's attributes, the identity words folded in) -> variations by prompt; saves the concept as a
    ComfyUI embedding + LoRA and judges likeness to the reference."""
    prompt = "a photo of <fs-person>, wearing a hat, with blue hair"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        N(2, "FaceSmithLoadDomainEncoder", dict(encoder=ENCODER), {}, (40, 300)),
        N(3, "FaceSmithSynthFace", dict(REFERENCE), {}, (40, 460), title="Reference (held-out identity 18)"),
        N(4, "FaceSmithEmbedConcept", dict(method="e4t", token="<fs-person>", steps=_described_steps(),
                                           learning_rate=_tuning_lr(), face_crop=False, seed=0),
          {"pipeline": (1, 0), "image": (3, 0), "encoder": (2, 0), "face_model": (10, 0)}, (420, 300)),
        _generate(5, (820, 80), prompt, {"pipeline": (1, 0), "concepts": (4, 0)}),
        N(6, "SaveImage", dict(filename_prefix="facesmith/e4t_personalize"), {"images": (5, 0)}, (1220, 80)),
        N(7, "SaveImage", dict(filename_prefix="facesmith/e4t_reference"), {"images": (3, 0)}, (420, 620)),
        N(8, "FaceSmithSaveConcept", dict(name="fs-person-demo", overwrite=True), {"concepts": (4, 0)}, (820, 520)),
        N(9, "FaceSmithJudgeFaces", dict(prompt=prompt), {"images": (5, 0), "reference": (3, 0)}, (1220, 420)),
        _load_face_model(10, (40, 780)),
    ]


def _described_steps() -> int:
    from .concept.personalize import DESCRIBED_TUNING_STEPS

    return DESCRIBED_TUNING_STEPS


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


def _analysis(id_, pos, links):
    return N(id_, "FaceSmithFaceAnalysis", dict(detector="auto", recognizer="none", insightface_pack="auto",
                                                provider="CPU", det_size=640, on_no_face="error", select="largest",
                                                face_index=0, retry=True), links, pos)


def _apply_identity(id_, pos, links, combine="average"):
    from .identity.adapter import DEFAULT_WEIGHT

    return N(id_, "FaceSmithApplyIdentity", dict(token="<identity>", weight=DEFAULT_WEIGHT, start_at=0.0, end_at=1.0,
                                                 combine=combine), links, pos)


def _describe(id_, pos, images, face_model):
    return N(id_, "FaceSmithFaceDescribe", dict(max_new_tokens=90, keep_model_loaded=True),
             {"images": images, "face_model": face_model}, pos)


def identity_one_photo() -> list[N]:
    """One face photo -> an identity (identity adapter, no tuning; the face model's words for who the person is
    folded in) -> variations by prompt; judges likeness and attributes and saves the identity for reuse without
    the photo."""
    prompt = "a photo of <identity>, wearing a hat, with blue hair"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        N(2, "FaceSmithLoadIdentityAdapter", dict(adapter=ADAPTER), {}, (40, 300)),
        N(3, "FaceSmithSynthFace", dict(REFERENCE), {}, (40, 460), title="Reference (held-out identity 18)"),
        _analysis(4, (460, 460), {"images": (3, 0)}),
        _apply_identity(5, (880, 300), {"pipeline": (1, 0), "adapter": (2, 0), "faces": (4, 0),
                                        "words": (11, 1)}),
        _load_face_model(10, (40, 880)),
        _describe(11, (460, 880), (3, 0), (10, 0)),
        _generate(6, (1300, 80), prompt, {"pipeline": (1, 0), "concepts": (5, 0)}),
        N(7, "SaveImage", dict(filename_prefix="facesmith/identity_one_photo"), {"images": (6, 0)}, (1720, 80)),
        N(8, "FaceSmithJudgeFaces", dict(prompt=prompt), {"images": (6, 0), "reference": (3, 0)}, (1720, 460)),
        N(9, "FaceSmithSaveIdentity", dict(name="identity-demo", overwrite=True), {"identity": (5, 1)},
          (1300, 620)),
    ]


def identity_several_photos() -> list[N]:
    """Several photos of one person (different hair, glasses, expression, pose) -> one mixed identity, with the
    face model's words for who the person is (read on photo 1; a batch of photos into Face Describe gives one line
    each, merged trait by trait)."""
    prompt = "a photo of <identity>, smiling, with black hair"
    views = [dict(REFERENCE, hair="blond", glasses="yes", view=11), dict(REFERENCE, expression="smiling", view=12),
             dict(REFERENCE, hat="yes", background="green", view=13)]
    nodes = [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        N(2, "FaceSmithLoadIdentityAdapter", dict(adapter=ADAPTER), {}, (40, 300)),
    ]
    for k, v in enumerate([REFERENCE] + views):
        nodes.append(N(10 + k, "FaceSmithSynthFace", dict(v), {}, (40, 460 + 420 * k),
                       title=f"Photo {k + 1} (held-out identity 18)"))
        nodes.append(_analysis(20 + k, (460, 460 + 420 * k), {"images": (10 + k, 0)}))
    nodes += [
        N(3, "FaceSmithMergeFaces", {}, {f"faces_{k + 1}": (20 + k, 0) for k in range(4)}, (880, 460)),
        _apply_identity(4, (1300, 300), {"pipeline": (1, 0), "adapter": (2, 0), "faces": (3, 0), "words": (31, 1)}),
        _load_face_model(30, (460, 80)),
        _describe(31, (880, 80), (10, 0), (30, 0)),
        _generate(5, (1720, 80), prompt, {"pipeline": (1, 0), "concepts": (4, 0)}),
        N(6, "SaveImage", dict(filename_prefix="facesmith/identity_several_photos"), {"images": (5, 0)},
          (2140, 80)),
        N(7, "FaceSmithJudgeFaces", dict(prompt=prompt), {"images": (5, 0), "reference": (10, 0)}, (2140, 460)),
    ]
    return nodes


def identity_vs_e4t() -> list[N]:
    """The same reference through the identity adapter (no tuning) and through E4T (encoder + tuning steps), side
    by side, both with the face model's description of the reference (the shipped way of each), both judged
    against the reference."""
    prompt_id = "a photo of <identity>, wearing glasses, with red hair"
    prompt_e4t = "a photo of <fs-person>, wearing glasses, with red hair"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        N(2, "FaceSmithLoadIdentityAdapter", dict(adapter=ADAPTER), {}, (40, 300)),
        N(3, "FaceSmithLoadDomainEncoder", dict(encoder=ENCODER), {}, (40, 460)),
        N(4, "FaceSmithSynthFace", dict(REFERENCE), {}, (40, 620), title="Reference (held-out identity 18)"),
        _analysis(5, (460, 620), {"images": (4, 0)}),
        _apply_identity(6, (880, 80), {"pipeline": (1, 0), "adapter": (2, 0), "faces": (5, 0), "words": (15, 1)}),
        _generate(7, (1300, 80), prompt_id, {"pipeline": (1, 0), "concepts": (6, 0)}),
        N(8, "SaveImage", dict(filename_prefix="facesmith/identity_adapter"), {"images": (7, 0)}, (1720, 80)),
        N(9, "FaceSmithJudgeFaces", dict(prompt=prompt_id), {"images": (7, 0), "reference": (4, 0)}, (2140, 80)),
        N(10, "FaceSmithEmbedConcept", dict(method="e4t", token="<fs-person>", steps=_described_steps(),
                                            learning_rate=_tuning_lr(), face_crop=False, seed=0),
          {"pipeline": (1, 0), "image": (4, 0), "encoder": (3, 0), "face_model": (14, 0)}, (880, 620)),
        _generate(11, (1300, 620), prompt_e4t, {"pipeline": (1, 0), "concepts": (10, 0)}),
        N(12, "SaveImage", dict(filename_prefix="facesmith/identity_e4t"), {"images": (11, 0)}, (1720, 620)),
        N(13, "FaceSmithJudgeFaces", dict(prompt=prompt_e4t), {"images": (11, 0), "reference": (4, 0)},
          (2140, 620)),
        _load_face_model(14, (40, 1040)),
        _describe(15, (460, 1040), (4, 0), (14, 0)),
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
        N(3, "FaceSmithFaceDescribe", dict(max_new_tokens=90, keep_model_loaded=True, read_identity_words=False),
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


INSTRUCT = "instruct/synthface-instruct.safetensors"
GLASSES_REFERENCE = dict(REFERENCE, identity=38, hair="black", glasses="yes", background="green", view=2)


def _load_instruct(id_, pos):
    return N(id_, "FaceSmithLoadInstructModel", dict(model=INSTRUCT), {}, pos)


def _instruction(id_, pos, text, images):
    """A Multimodal Instruction node; ``images``: the render nodes that are image1, image2 ..."""
    return N(id_, "FaceSmithMultimodalInstruction", dict(instruction=text),
             {f"image{k}": (src, 0) for k, src in enumerate(images, 1)}, pos)


def _instruct(id_, pos, links, source="image1", batch=2, seed=0):
    return N(id_, "FaceSmithInstructGenerate", dict(source=source, text_guidance=3.0, image_guidance=1.5, steps=20,
                                                    seed=seed, batch_size=batch, scheduler="dpmpp_2m", weight=1.0),
             links, pos)


def _instruct_links(instruction_id):
    return {"pipeline": (1, 0), "instruct_model": (2, 0), "instruction": (instruction_id, 0)}


def instruct_edit_photo() -> list[N]:
    """Edit a photo by a text instruction (instruction model, MIGE): the result keeps the photo's size and layout;
    the judges check the asked attribute and the likeness to the photo. The render stands in for a photo."""
    text = "make <image1> smiling"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        _load_instruct(2, (40, 300)),
        N(3, "FaceSmithSynthFace", dict(REFERENCE), {}, (40, 460), title="Photo to edit (held-out identity 18)"),
        _instruction(4, (420, 460), text, [3]),
        _instruct(5, (820, 80), _instruct_links(4)),
        N(6, "SaveImage", dict(filename_prefix="facesmith/instruct_photo_edit"), {"images": (5, 0)}, (1220, 80)),
        N(7, "SaveImage", dict(filename_prefix="facesmith/instruct_photo_source"), {"images": (3, 0)}, (420, 760)),
        N(8, "FaceSmithJudgeFaces", dict(prompt="smiling"), {"images": (5, 0), "reference": (3, 0)}, (1220, 460)),
    ]


def instruct_reference_edit() -> list[N]:
    """Edit one person with something taken from another photo: "give <image1> the glasses of <image2>" (a subject
    edit); judges the glasses and the likeness to the edited person."""
    text = "give <image1> the glasses of <image2>"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        _load_instruct(2, (40, 300)),
        N(3, "FaceSmithSynthFace", dict(REFERENCE), {}, (40, 460), title="image1: photo to edit (identity 18)"),
        N(4, "FaceSmithSynthFace", dict(GLASSES_REFERENCE), {}, (40, 900),
          title="image2: whose glasses (identity 38)"),
        _instruction(5, (420, 460), text, [3, 4]),
        _instruct(6, (820, 80), _instruct_links(5)),
        N(7, "SaveImage", dict(filename_prefix="facesmith/instruct_reference_edit"), {"images": (6, 0)},
          (1220, 80)),
        N(8, "SaveImage", dict(filename_prefix="facesmith/instruct_reference_source"), {"images": (3, 0)},
          (420, 760)),
        N(9, "FaceSmithJudgeFaces", dict(prompt="wearing glasses"), {"images": (6, 0), "reference": (3, 0)},
          (1220, 460)),
    ]


def instruct_subject_generation() -> list[N]:
    """A new picture of the person in a photo, as the instruction asks (subject-driven generation: no source), with
    the identity of that photo from the identity adapter applied together (it makes the generated person look more
    like the photo: instruct README); judges the asked attributes and the likeness to the photo."""
    text = "a photo of <image1>, wearing a hat, on a blue background"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        _load_instruct(2, (40, 300)),
        N(3, "FaceSmithSynthFace", dict(REFERENCE), {}, (40, 460), title="Subject (held-out identity 18)"),
        _instruction(4, (420, 460), text, [3]),
        N(9, "FaceSmithLoadIdentityAdapter", dict(adapter=ADAPTER), {}, (40, 900)),
        _analysis(10, (420, 900), {"images": (3, 0)}),
        _apply_identity(11, (820, 900), {"pipeline": (1, 0), "adapter": (9, 0), "faces": (10, 0)}),
        _instruct(5, (820, 80), dict(_instruct_links(4), concepts=(11, 0)), source="none (generate)"),
        N(6, "SaveImage", dict(filename_prefix="facesmith/instruct_subject_generation"), {"images": (5, 0)},
          (1220, 80)),
        N(7, "SaveImage", dict(filename_prefix="facesmith/instruct_subject_reference"), {"images": (3, 0)},
          (420, 760)),
        N(8, "FaceSmithJudgeFaces", dict(prompt=text), {"images": (5, 0), "reference": (3, 0)}, (1220, 460)),
    ]


def instruct_edit_check() -> list[N]:
    """Describe a photo, edit it by an instruction, and check the edit with the face understanding model: its
    attributes against what the instruction asked, and those not asked against the photo's own (pass/fail +
    reasons: an unasked change fails), so a graph verifies its own edit."""
    text = "make <image1> with red hair"
    return [
        N(1, "FaceSmithLoadBaseModel", dict(model=BASE, arch="auto", device="auto", dtype="auto"), {}, (40, 80)),
        _load_instruct(2, (40, 300)),
        N(3, "FaceSmithSynthFace", dict(REFERENCE), {}, (40, 460),
          title="Photo (held-out identity 18; use Load Image)"),
        _load_face_model(4, (40, 900)),
        N(5, "FaceSmithFaceDescribe", dict(max_new_tokens=90, keep_model_loaded=True, read_identity_words=False),
          {"images": (3, 0), "face_model": (4, 0)}, (420, 80)),
        _instruction(6, (420, 460), text, [3]),
        _instruct(7, (820, 80), _instruct_links(6)),
        N(8, "SaveImage", dict(filename_prefix="facesmith/instruct_edit_check"), {"images": (7, 0)}, (1220, 80)),
        N(9, "FaceSmithFaceAttributes", dict(keep_model_loaded=True), {"images": (7, 0), "face_model": (4, 0)},
          (820, 460)),
        N(10, "FaceSmithCheckAttributes", dict(prompt=text, min_confidence=0.5),
          {"attributes_json": (9, 0), "source_attributes_json": (11, 0)}, (1220, 460)),
        N(11, "FaceSmithFaceAttributes", dict(keep_model_loaded=True), {"images": (3, 0), "face_model": (4, 0)},
          (820, 800), title="Face Attributes of the photo"),
    ]


WORKFLOWS = {
    "synthface_text_to_image": text_to_image,
    "e4t_personalize": e4t_personalize,
    "e4t_train_domain_encoder": e4t_train_domain_encoder,
    "identity_one_photo": identity_one_photo,
    "identity_several_photos": identity_several_photos,
    "identity_vs_e4t": identity_vs_e4t,
    "understand_describe_photo": understand_describe_photo,
    "understand_generate_check": understand_generate_check,
    "instruct_edit_photo": instruct_edit_photo,
    "instruct_reference_edit": instruct_reference_edit,
    "instruct_subject_generation": instruct_subject_generation,
    "instruct_edit_check": instruct_edit_check,
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


# Template thumbnails: ComfyUI's template browser shows workflows/<name>.jpg beside workflows/<name>.json. They are
# made from a real run of each workflow on the built-in models (`facesmith run workflows/<name>.json --out DIR/<name>`)
# by ``python -m facesmith.core.workflow_defs --thumbnails DIR``.
THUMBNAIL_SIZE = 256
THUMBNAIL_SOURCES = {  # name -> SaveImage prefixes (under the output folder) whose images make the thumbnail
    "synthface_text_to_image": ["facesmith/text_to_image"],
    "e4t_personalize": ["facesmith/e4t_reference", "facesmith/e4t_personalize"],
    "e4t_train_domain_encoder": ["facesmith/e4t_loss", "facesmith/e4t_trained_now"],
    "identity_one_photo": ["facesmith/identity_one_photo"],
    "identity_several_photos": ["facesmith/identity_several_photos"],
    "identity_vs_e4t": ["facesmith/identity_adapter", "facesmith/identity_e4t"],
    "understand_describe_photo": ["facesmith/understand_table"],
    "understand_generate_check": ["facesmith/generate_check"],
    "instruct_edit_photo": ["facesmith/instruct_photo_source", "facesmith/instruct_photo_edit"],
    "instruct_reference_edit": ["facesmith/instruct_reference_source", "facesmith/instruct_reference_edit"],
    "instruct_subject_generation": ["facesmith/instruct_subject_reference", "facesmith/instruct_subject_generation"],
    "instruct_edit_check": ["facesmith/instruct_edit_check"],
}


def compose_thumbnail(images: list) -> "Image.Image":
    """PIL images -> one THUMBNAIL_SIZE square: the first image fills the top half when it is wide (a loss graph) or
    the left column when it is a reference followed by others, else a square grid."""
    from PIL import Image

    side = THUMBNAIL_SIZE
    canvas = Image.new("RGB", (side, side), (24, 24, 24))
    images = [im.convert("RGB") for im in images]
    grid_of = lambda ims, w, h: _grid(ims, w, h)  # noqa: E731
    if images and images[0].width > images[0].height * 1.5:  # a graph on top, the rest below
        canvas.paste(images[0].resize((side, side // 2), Image.LANCZOS), (0, 0))
        canvas.paste(grid_of(images[1:], side, side // 2), (0, side // 2))
    elif len(images) == 5:  # a reference and four results
        canvas.paste(images[0].resize((side // 2, side // 2), Image.LANCZOS), (0, side // 4))
        canvas.paste(grid_of(images[1:], side // 2, side), (side // 2, 0))
    else:
        canvas.paste(grid_of(images, side, side), (0, 0))
    return canvas


def _grid(images: list, width: int, height: int):
    from PIL import Image

    tile = Image.new("RGB", (width, height), (24, 24, 24))
    if not images:
        return tile
    cols = 2 if len(images) > 1 else 1
    rows = (len(images) + cols - 1) // cols
    cell = min(width // cols, height // rows)
    x0, y0 = (width - cols * cell) // 2, (height - rows * cell) // 2
    for i, im in enumerate(images):
        tile.paste(im.resize((cell, cell), Image.LANCZOS), (x0 + (i % cols) * cell, y0 + (i // cols) * cell))
    return tile


def write_thumbnails(run_dir: Path, names: list[str] | None = None) -> list[Path]:
    from PIL import Image

    written = []
    for name, prefixes in THUMBNAIL_SOURCES.items():
        if names is not None and name not in names:
            continue
        images = []
        for prefix in prefixes:
            for png in sorted((Path(run_dir) / name).glob(f"{prefix}_*.png")):
                with Image.open(png) as im:
                    images.append(im.copy())
        if not images:
            raise FileNotFoundError(f"no images of {prefixes} in {Path(run_dir) / name}: run `facesmith run "
                                    f"workflows/{name}.json --out {Path(run_dir) / name}` first")
        path = WORKFLOWS_DIR / f"{name}.jpg"
        tmp = path.with_suffix(".jpg.tmp")
        compose_thumbnail(images).save(tmp, "JPEG", quality=85)
        tmp.replace(path)
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover
    import sys

    if len(sys.argv) >= 3 and sys.argv[1] == "--thumbnails":  # --thumbnails DIR [NAME ...]
        for p in write_thumbnails(Path(sys.argv[2]), sys.argv[3:] or None):
            print(p)
    else:
        for p in write_all():
            print(p)
