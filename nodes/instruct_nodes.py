"""Instruction model nodes (MIGE): load / train an instruction model, write a multimodal instruction (text with
``<imageN>`` placeholders + the images), and generate or edit by it on the one Generate path. The maths lives in
``core/instruct/``; the training in ``trainers/instruct.py``."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..core import paths
from ..core.formats import check_new_file, safe_join
from ..core.generate import MAX_BATCH, MAX_STEPS, SCHEDULER_NAMES, SEED_MAX, GenerateRequest, InvalidRequest, \
    check_field
from ..core.instruct.instruction import MAX_IMAGES, Instruction, InstructionError, parse, placeholders
from ..core.instruct.model import TASKS
from .comfy_bridge import grad_enabled, interruptible, node_progress
from .concept_nodes import _exists_text, _file_name, _name_problem, node_error, trainer_seed
from .generate import conditioners_of
from .identity_adapter_nodes import CONCEPT_TYPE, _file_hash
from .loaders import PIPELINE_TYPE
from .node_errors import input_error

log = logging.getLogger("facesmith")

INSTRUCT_MODEL_TYPE = "FACESMITH_INSTRUCT_MODEL"
INSTRUCTION_TYPE = "FACESMITH_INSTRUCTION"
CATEGORY = "FaceSmith/Instruct"
SUBDIR = "instruct"                  # <models>/facesmith/instruct/NAME.safetensors
WORK_SUBDIR = ".work/instruct"       # checkpoints (hidden from model lists)
BUILTIN_MODEL = "instruct/synthface-instruct.safetensors"
IMAGE_INPUTS = tuple(f"image{n}" for n in range(1, MAX_IMAGES + 1))
GENERATE = "none (generate)"
SOURCES = (GENERATE,) + IMAGE_INPUTS
JOINT = "joint"
TASK_CHOICES = (JOINT,) + TASKS


def list_instruct_models() -> list[str]:
    """Names under models/facesmith/instruct/ whose metadata says they are instruction models."""
    from ..core.instruct.model import FORMAT

    return paths.list_models_tagged("facesmith", "format", FORMAT, f"{SUBDIR}/")


@dataclass(frozen=True, eq=False)
class MultimodalInstruction:
    """What flows on an INSTRUCTION link: the checked instruction and its images (number -> IMAGE (1, H, W, C))."""

    instruction: Instruction
    images: dict

    def __repr__(self) -> str:  # keep ComfyUI's and pytest's output short
        sizes = ", ".join(f"image{n} {tuple(im.shape[1:3])}" for n, im in sorted(self.images.items()))
        return f"MultimodalInstruction({self.instruction.text!r}; {sizes})"


def _task_of(source: int | None, instruction: Instruction) -> str:
    """Which of the model's tasks a request is: no source = subject generation; an edit naming only its source =
    instruction edit; an edit naming other images too = subject edit."""
    if source is None:
        return "subject_generation"
    return "instruction_edit" if len(instruction.images) == 1 else "subject_edit"


def _type_ok(received: str, expected: str) -> bool:
    """ComfyUI's own rule for a link's type (``*`` matches anything; a comma-separated type is a union)."""
    if "*" in (received, expected):
        return True
    return bool(set(str(received).split(",")) & set(str(expected).split(",")))


class FaceSmithLoadInstructModel:
    DISPLAY_NAME = "Load Instruction Model (FaceSmith)"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads an instruction model (MIGE: multimodal instructions for subject-driven generation and "
                   "instruction editing) from models/facesmith/instruct/. It carries its own face encoder and works "
                   "only with the base model it was trained for; the node shows that base and the tasks it was "
                   "trained on.")
    RETURN_TYPES = (INSTRUCT_MODEL_TYPE,)
    RETURN_NAMES = ("instruct_model",)
    OUTPUT_TOOLTIPS = ("The instruction model, for 'Instruct Generate/Edit (FaceSmith)'.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        names = list_instruct_models()
        if BUILTIN_MODEL not in names:  # not installed yet: keep shipped workflows valid, loading says what to do
            names.append(BUILTIN_MODEL)
        return {"required": {"model": (names, {
            "default": BUILTIN_MODEL,
            "tooltip": "An instruction model .safetensors under models/facesmith/instruct/ (yours first, then the "
                       "built-in one)."})}}

    @classmethod
    def IS_CHANGED(cls, model):
        return _file_hash(model)

    def load(self, model):
        from ..core.instruct.model import InstructModel

        node = self.DISPLAY_NAME
        try:
            path = paths.resolve("facesmith", model)
        except FileNotFoundError as exc:
            hint = (" (the built-in instruction model is not installed: train one with 'Train Instruction Model "
                    "(FaceSmith)' or `facesmith train instruct --out synthface-instruct`)"
                    if model == BUILTIN_MODEL else "")
            raise input_error(node, "model", f"{exc}{hint}") from exc
        except ValueError as exc:
            raise input_error(node, "model", exc) from exc
        try:
            loaded = InstructModel.load(path)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise input_error(node, "model", f"({model}): {exc}") from exc
        report = (f"{model}: base {loaded.base_name} ({loaded.base_fingerprint}); trained for "
                  f"{', '.join(loaded.tasks)}; {loaded.info.get('steps', '?')} steps; {loaded.cfg.n_tokens} words "
                  "per image")
        return {"ui": {"text": [report]}, "result": (loaded,)}


class FaceSmithMultimodalInstruction:
    DISPLAY_NAME = "Multimodal Instruction (FaceSmith)"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "An instruction that mixes text and images: refer to the connected images as <image1> .. <image4>, e.g. "
        "'make <image1> smiling', 'give <image1> the glasses of <image2>', 'a photo of <image1>, wearing a hat'. "
        "Every <imageN> written must have its image connected and every connected image must be named, so a typo "
        "stops the graph when it is queued. Referenced images are centre-cropped to a square; an edited image keeps "
        "its own size.")
    RETURN_TYPES = (INSTRUCTION_TYPE,)
    RETURN_NAMES = ("instruction",)
    OUTPUT_TOOLTIPS = ("The checked instruction and its images, for 'Instruct Generate/Edit (FaceSmith)'.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        tips = {1: "The image written <image1> (the one an edit changes by default).",
                2: "The image written <image2> (e.g. whose glasses, hair colour, hat or beard to take)."}
        optional = {name: ("IMAGE", {"tooltip": tips.get(n, f"The image written <image{n}>.") + " One image."})
                    for n, name in enumerate(IMAGE_INPUTS, 1)}
        return {"required": {"instruction": ("STRING", {
            "multiline": True, "default": "make <image1> smiling",
            "tooltip": "What to do, naming the images as <image1> .. <image4>. Edits: 'make <image1> smiling', "
                       "'give <image1> the hair colour of <image2>'; generation: 'a photo of <image1>, wearing a "
                       "hat, on a blue background'."})},
                "optional": optional}

    @classmethod
    def VALIDATE_INPUTS(cls, instruction=None, input_types=None):
        """At queue time, before any model runs: every <imageN> has a connected imageN and every connected image is
        named. ComfyUI (and the headless runner) pass the linked inputs' types as ``input_types``: a connected image
        is one listed there. Naming ``input_types`` turns off ComfyUI's own type check of this node's links, so it is
        done here. A linked instruction arrives as None and is checked when the node runs."""
        node = cls.DISPLAY_NAME
        linked = dict(input_types or {})
        for name, got in linked.items():
            want = "IMAGE" if name in IMAGE_INPUTS else "STRING" if name == "instruction" else None
            if want is not None and not _type_ok(got, want):
                return str(input_error(node, name, f"is linked to a {got} output; it takes {want}"))
        if instruction is None:
            return True
        connected = [n for n, name in enumerate(IMAGE_INPUTS, 1) if name in linked]
        if input_types is None:  # called without the link types: check the text on its own
            connected = [n for n in placeholders(instruction) if 1 <= n <= MAX_IMAGES]
        try:
            parse(instruction, connected)
        except InstructionError as exc:
            return str(input_error(node, exc.field, exc.reason))
        return True

    def build(self, instruction, image1=None, image2=None, image3=None, image4=None):
        from ..core.images import check_comfy

        node = self.DISPLAY_NAME
        images = {}
        for n, (name, image) in enumerate(zip(IMAGE_INPUTS, (image1, image2, image3, image4)), 1):
            if image is None:
                continue
            try:
                image = check_comfy(image, name)
            except (TypeError, ValueError) as exc:
                raise input_error(node, name, str(exc)) from None
            if image.shape[0] != 1:
                raise input_error(node, name, f"holds {image.shape[0]} images; connect exactly one image to each "
                                              "imageN input")
            images[n] = image
        if not isinstance(instruction, str):
            raise input_error(node, "instruction", f"must be text, got {type(instruction).__name__}")
        try:
            checked = parse(instruction, sorted(images))
        except InstructionError as exc:
            raise input_error(node, exc.field, exc.reason) from exc
        return (MultimodalInstruction(checked, images),)


class FaceSmithInstructGenerate:
    DISPLAY_NAME = "Instruct Generate/Edit (FaceSmith)"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Generates or edits by a multimodal instruction, on the one Generate path. source = image1..image4: that "
        "image is edited (its latents condition the UNet and the result keeps its width and height, pixel for "
        "pixel); source = none: a new image is generated from the instruction (subject-driven generation). "
        "text_guidance follows the instruction, image_guidance stays close to the source. Same seed and settings "
        "give the same images; image i of a batch uses seed + i.")
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The generated or edited images, batch_size of them (an edit: the source's size).",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE_TYPE, {"tooltip": "The base pipeline the instruction model was trained for."}),
            "instruct_model": (INSTRUCT_MODEL_TYPE, {"tooltip": "From 'Load Instruction Model (FaceSmith)'."}),
            "instruction": (INSTRUCTION_TYPE, {"tooltip": "From 'Multimodal Instruction (FaceSmith)'."}),
            "source": (list(SOURCES), {
                "default": "image1",
                "tooltip": "The image to edit (it must be named in the instruction); 'none (generate)' makes a new "
                           "image from the instruction instead."}),
            "text_guidance": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                        "tooltip": "How strongly to follow the instruction (classifier-free "
                                                   "guidance on the text; 1 or less turns it off)."}),
            "image_guidance": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 100.0, "step": 0.05, "round": 0.01,
                                         "tooltip": "Edits: how closely to keep the source image (guidance on the "
                                                    "source; higher keeps more). Ignored when generating."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": MAX_STEPS, "tooltip": "Number of denoising steps."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "Random seed; image i of the batch uses seed + i."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": MAX_BATCH,
                                   "tooltip": "How many images to make at once."}),
            "scheduler": (list(SCHEDULER_NAMES), {"default": "dpmpp_2m",
                                                  "tooltip": "Sampler ('default' is the model's own)."}),
            "weight": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 5.0, "step": 0.05,
                                 "tooltip": "Strength of the instruction model's UNet offsets and source channels "
                                            "(1 = as trained, 0 = the bare base)."}),
        }, "optional": {
            "concepts": (CONCEPT_TYPE, {
                "tooltip": "Optional FaceSmith conditionings applied with the instruction, e.g. the identity from "
                           "'Apply Identity (FaceSmith)' of the person in image1: its token goes right after "
                           "<image1> unless the instruction writes it. It makes generated people look more like "
                           "image1 (measured: instruct README)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, text_guidance=None, image_guidance=None, weight=None, batch_size=None):
        """Before anything runs: NaN/Inf or out-of-range guidance, weight and batch size (ComfyUI leaves the range
        checks of inputs named here to this method). Linked inputs arrive as None and are checked when the node
        runs."""
        node = cls.DISPLAY_NAME
        for name, field, value in (("text_guidance", "cfg", text_guidance), ("batch_size", "batch_size", batch_size)):
            if value is None:
                continue
            try:
                check_field(field, value)
            except InvalidRequest as exc:
                return str(input_error(node, name, exc.reason))
        for name, value, lo, hi in (("image_guidance", image_guidance, 0.0, 100.0), ("weight", weight, -2.0, 5.0)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return str(input_error(node, name, f"must be a finite number, got {value!r}"))
            if not lo <= value <= hi:
                return str(input_error(node, name, f"must be in [{lo:g}, {hi:g}], got {value:g}"))
        return True

    def run(self, pipeline, instruct_model, instruction, source, text_guidance, image_guidance, steps, seed,
            batch_size, scheduler, weight, concepts=None):
        from ..core.concept.concept import BaseMismatch
        from ..core.instruct.model import InstructModel, instruct_images
        from ..core.memory import MemoryLimitExceeded, check_generate_memory
        from ..core.models import BasePipeline

        node = self.DISPLAY_NAME
        if not isinstance(pipeline, BasePipeline):
            raise input_error(node, "pipeline", f"must come from 'Load Base Model (FaceSmith)', got "
                                                f"{type(pipeline).__name__}")
        if not isinstance(instruct_model, InstructModel):
            raise input_error(node, "instruct_model", f"must come from 'Load Instruction Model (FaceSmith)', got "
                                                      f"{type(instruct_model).__name__}")
        if not isinstance(instruction, MultimodalInstruction):
            raise input_error(node, "instruction", f"must come from 'Multimodal Instruction (FaceSmith)', got "
                                                   f"{type(instruction).__name__}")
        ins = instruction.instruction
        if source == GENERATE:
            number = None
        elif source in IMAGE_INPUTS:
            number = IMAGE_INPUTS.index(source) + 1
            if number not in instruction.images:
                named = ", ".join(f"image{n}" for n in ins.images)
                raise input_error(node, "source", f"is {source}, but the instruction has no {source} (it names "
                                                  f"{named}); choose one of those to edit, or '{GENERATE}'")
        else:
            raise input_error(node, "source", f"must be one of {list(SOURCES)}, got {source!r}")
        try:
            instruct_model.check_base(pipeline)
        except BaseMismatch as exc:
            raise input_error(node, "instruct_model", exc) from exc
        extra = conditioners_of(node, concepts)
        request = GenerateRequest(prompt=ins.prompt, seed=seed, steps=steps, cfg=text_guidance,
                                  batch_size=batch_size, scheduler=scheduler)
        try:
            request.validate()
        except InvalidRequest as exc:
            raise input_error(node, "text_guidance" if exc.field == "cfg" else exc.field, exc.reason) from exc
        try:
            check_generate_memory(pipeline, request)
        except MemoryLimitExceeded as exc:
            raise input_error(node, "batch_size", exc) from exc
        src = None if number is None else instruction.images[number]
        with interruptible():
            images = instruct_images(pipeline, instruct_model, ins, instruction.images, source=src,
                                     image_guidance=float(image_guidance), text_guidance=float(text_guidance),
                                     steps=int(steps), seed=int(seed), batch_size=int(batch_size),
                                     scheduler=scheduler, weight=float(weight), progress=node_progress(node),
                                     conditioners=extra)
        task = _task_of(number, ins)
        what = (f"edited {source} ({images.shape[2]}x{images.shape[1]}, its own size)" if number is not None
                else f"generated {images.shape[0]} image(s)")
        lines = [f"{what}: {task.replace('_', ' ')}"]
        if task not in instruct_model.tasks:
            lines.append(f"note: this model was trained for {', '.join(instruct_model.tasks)} only; "
                         f"{task.replace('_', ' ')} is outside what it learned")
            log.warning("%s: %s", node, lines[-1])
        return {"ui": {"text": ["\n".join(lines)]}, "result": (images,)}


class FaceSmithTrainInstructModel:
    DISPLAY_NAME = "Train Instruction Model (FaceSmith)"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Trains an instruction model (MIGE) on rendered SynthFace TRAIN identities over the frozen base: subject "
        "generation ('a photo of <image1>, ...'), instruction edits ('make <image1> smiling') and subject edits "
        "('give <image1> the glasses of <image2>'), each with an exactly rendered target. 'joint' trains one model on "
        "all three; one task alone gives a single-task model. Saves models/facesmith/instruct/NAME.safetensors; "
        "checkpoints let an interrupted run resume from the step reached.")
    RETURN_TYPES = (INSTRUCT_MODEL_TYPE, "IMAGE", "STRING")
    RETURN_NAMES = ("instruct_model", "loss_graph", "path")
    OUTPUT_TOOLTIPS = ("The trained instruction model.", "Loss curve.", "Where it was saved.")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE_TYPE, {"tooltip": "The frozen base model the instruction model is for."}),
            "tasks": (list(TASK_CHOICES), {
                "default": JOINT,
                "tooltip": "joint: one model for all three tasks; or one task only (a single-task model)."}),
            "per_task": ("INT", {"default": 200, "min": 1, "max": 100_000,
                                 "tooltip": "Rendered samples of each task (the built-in model used 3000)."}),
            "steps": ("INT", {"default": 100, "min": 1, "max": 1_000_000,
                              "tooltip": "Optimisation steps (the built-in model used 1500)."}),
            "batch_size": ("INT", {"default": 16, "min": 1, "max": 4096, "tooltip": "Samples per step."}),
            "learning_rate": ("FLOAT", {"default": 1e-3, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": 1e-7,
                                        "tooltip": "AdamW learning rate (warm-up, then cosine decay)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX,
                             "tooltip": "Seed for the samples rendered, the initial weights and the noise (the same "
                                        "range as every seed in ComfyUI; above 2**32-1 it wraps around)."}),
            "resume": ("BOOLEAN", {"default": True,
                                   "tooltip": "Continue from this name's last checkpoint if there is one."}),
            "name": ("STRING", {"default": "my-instruct",
                                "tooltip": "Saved as models/facesmith/instruct/NAME.safetensors."}),
            "overwrite": ("BOOLEAN", {"default": False,
                                      "tooltip": "Replace an existing instruction model of this name."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name=None):
        problem = _name_problem(name)
        return True if problem is None else str(input_error(cls.DISPLAY_NAME, "name", problem))

    def train(self, pipeline, tasks, per_task, steps, batch_size, learning_rate, seed, resume, name, overwrite):
        import torch

        from ..core.identity.face_encoder import FaceEncoder
        from ..core.training.checkpoints import RecipeMismatch
        from ..core.training.loop import loss_graph
        from ..trainers.instruct import InstructTrainSettings, build_pool, render_samples, train_instruct

        node = self.DISPLAY_NAME
        if tasks not in TASK_CHOICES:
            raise input_error(node, "tasks", f"must be one of {list(TASK_CHOICES)}, got {tasks!r}")
        root = paths.models_root("facesmith")
        try:
            out = safe_join(root, f"{SUBDIR}/{_file_name(name)}")
            check_new_file(out, overwrite)
        except FileExistsError as exc:
            raise input_error(node, "name", _exists_text(exc, "turn on 'overwrite' or choose another name")) from exc
        except ValueError as exc:
            raise input_error(node, "name", exc) from exc
        chosen = TASKS if tasks == JOINT else (tasks,)
        settings = InstructTrainSettings(tasks=chosen, steps=int(steps), batch_size=int(batch_size),
                                         learning_rate=float(learning_rate), seed=trainer_seed(seed),
                                         checkpoint_every=max(10, min(200, int(steps) // 4 or 1)))
        try:
            settings.check()
        except ValueError as exc:
            field = str(exc).split()[0]
            raise input_error(node, field if field in ("steps", "batch_size") else "tasks", exc) from exc
        try:
            face_encoder = FaceEncoder.load()
        except FileNotFoundError as exc:
            raise node_error(node, f"the face encoder is missing ({exc}); `facesmith assets --build` makes it") \
                from exc
        images, samples = render_samples(int(per_task), trainer_seed(seed), pipeline.native_size, tasks=chosen)
        source = f"synthface train instruct tasks={','.join(chosen)} per_task={per_task} seed={seed}"
        with interruptible(), grad_enabled():
            pool = build_pool(pipeline, face_encoder, images, samples, grid=settings.grid,
                              progress=node_progress(f"{node}: encode"), source_name=source)
        del images
        work_dir = safe_join(root, f"{WORK_SUBDIR}/{out.stem}")
        try:
            with interruptible(), grad_enabled():
                model, result = train_instruct(pipeline, face_encoder, pool, settings, work_dir=str(work_dir),
                                               resume=bool(resume), progress=node_progress(node, loss_chart=True))
        except RecipeMismatch as exc:
            raise input_error(node, "resume", f"is on, but the checkpoint {exc.path} of '{name}' was trained with "
                                              f"other settings ({'; '.join(exc.differences)}); turn 'resume' off "
                                              "to start fresh, or choose another name") from exc
        model.info.update(base_model=pipeline.name, dataset=source)
        model.save(out, overwrite=overwrite)
        graph = torch.from_numpy(np.array(loss_graph(result.loss_history, title=f"instruction model {out.stem}")))
        resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
        last = f", last loss {result.loss_history[-1]:.4g}" if result.loss_history else ""
        report = f"saved {out}\n{result.steps_done} steps ({', '.join(chosen)}){resumed}{last}"
        return {"ui": {"text": [report]}, "result": (model, (graph.float() / 255.0)[None], str(out))}


NODE_CLASS_MAPPINGS = {c.__name__: c for c in (FaceSmithLoadInstructModel, FaceSmithMultimodalInstruction,
                                                FaceSmithInstructGenerate, FaceSmithTrainInstructModel)}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
