"""Face understanding nodes (UniF2ace): describe, ask, read attributes, check them against a prompt, load and train
the understanding models. Thin: every method lives in ``core/understand``."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..core import paths
from ..core.formats import check_new_file, safe_join
from ..core.images import check_comfy, comfy_to_numpy, numpy_to_comfy
from ..core.generate import SEED_MAX
from .comfy_bridge import grad_enabled, interruptible, node_progress
from .concept_nodes import trainer_seed
from .identity_adapter_nodes import _file_hash
from .node_errors import input_error

log = logging.getLogger("facesmith")

FACE_MODEL_TYPE = "FACESMITH_FACE_MODEL"
CATEGORY = "FaceSmith/Understand"
_CACHE: dict = {}  # the built-in model, kept between runs while keep_model_loaded is on


def _builtin():
    from ..core.understand.store import BUILTIN_UNIFIED, load_face_model

    if "builtin" not in _CACHE:
        _CACHE["builtin"] = load_face_model("unified", BUILTIN_UNIFIED)
    return _CACHE["builtin"]


def _model(node: str, face_model, keep_model_loaded: bool = True):
    if face_model is not None:
        return face_model
    try:
        und = _builtin()
    except FileNotFoundError as exc:
        raise input_error(node, "face_model", f"is not connected and the built-in model is missing ({exc})") from exc
    if not keep_model_loaded:
        _CACHE.pop("builtin", None)
    return und


def _images(node: str, images) -> np.ndarray:
    try:
        images = check_comfy(images, "images")
    except (TypeError, ValueError) as exc:
        raise input_error(node, "images", str(exc)) from None
    arr = comfy_to_numpy(images)
    return arr[None] if arr.ndim == 3 else arr


def _release(und, keep_model_loaded: bool) -> None:
    """keep_model_loaded off: a model on a GPU goes back to the CPU and the cache is emptied after the run."""
    if keep_model_loaded:
        return
    model = getattr(und, "model", None)
    if model is not None and next(model.parameters()).device.type != "cpu":
        model.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_FACE_MODEL_INPUT = (FACE_MODEL_TYPE, {"tooltip": "A face understanding model from Load Face Model; when not "
                                                   "connected, the built-in SynthFace MoE model is used."})
_KEEP = ("BOOLEAN", {"default": True, "tooltip": "Keep the model in memory after this run (off: the built-in model is "
                                                  "dropped and a GPU model goes back to the CPU)."})


class FaceSmithLoadFaceModel:
    DISPLAY_NAME = "Load Face Model (FaceSmith)"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads a face understanding model: the unified SynthFace model (mixture of experts or dense, "
                   "from models/facesmith/understand/) or any local transformers vision-language model folder "
                   "(e.g. models/LLM/SmolVLM-256M), strictly offline, with an optional FaceSmith LoRA. Missing files "
                   "are named and a model too large for the device is refused before loading.")
    RETURN_TYPES = (FACE_MODEL_TYPE,)
    RETURN_NAMES = ("face_model",)
    OUTPUT_TOOLTIPS = ("The loaded understanding model.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        from ..core.understand.store import BUILTIN_UNIFIED, unified_models, vlm_loras

        names = unified_models() or [BUILTIN_UNIFIED]
        opts = {"tooltip": "backend=unified: the model file under models/facesmith/understand/."}
        if BUILTIN_UNIFIED in names:
            opts["default"] = BUILTIN_UNIFIED
        return {"required": {
            "backend": (["unified", "vlm"], {"default": "unified", "tooltip": "unified: FaceSmith's own model; vlm: "
                                                                              "a transformers vision-language folder."}),
            "model": (names, opts),
            "vlm_folder": ("STRING", {"default": "", "tooltip": "backend=vlm: path of the local model folder "
                                                                "(config.json, *.safetensors, processor files)."}),
            "lora": (["none"] + vlm_loras(), {"default": "none", "tooltip": "backend=vlm: a FaceSmith face VQA LoRA "
                                                                           "trained for that folder."}),
            "device": (["cpu", "cuda"], {"default": "cpu", "tooltip": "Where the model runs."}),
        }}

    @classmethod
    def IS_CHANGED(cls, backend, model, vlm_folder, lora, **_):  # ComfyUI passes every widget value (device too)
        """The content of what would be read (the model file, or the VLM folder and its LoRA): an overwritten file
        is read again instead of served from ComfyUI's cache."""
        if backend == "vlm":
            folder = Path(vlm_folder.strip()) if vlm_folder and vlm_folder.strip() else None
            return paths.file_signature(folder if folder and folder.is_dir() else None) + \
                ("" if lora == "none" else _file_hash(lora))
        return _file_hash(model)

    def load(self, backend, model, vlm_folder, lora, device):
        from ..core.memory import MemoryLimitExceeded
        from ..core.understand.store import load_face_model
        from ..core.understand.vlm import VLMFolderError

        node = self.DISPLAY_NAME
        if device == "cuda" and not torch.cuda.is_available():
            raise input_error(node, "device", "is cuda, but no CUDA GPU is available")
        try:
            return (load_face_model(backend, model, vlm_folder.strip(), None if lora == "none" else lora, device),)
        except (VLMFolderError, MemoryLimitExceeded) as exc:
            raise input_error(node, "vlm_folder", exc) from exc
        except (FileNotFoundError, ValueError) as exc:
            raise input_error(node, "model" if backend == "unified" else "lora", exc) from exc


class FaceSmithFaceDescribe:
    DISPLAY_NAME = "Face Describe (FaceSmith)"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Writes a fine-grained caption of each face (identity traits and attributes), shown on the node. "
                   "A caption the model is unsure of (mean word probability below 0.5) is marked low-confidence. "
                   "identity_words: who each person is in words (the identity traits read with confidence >= 0.5), "
                   "for Apply Identity's words input (read_identity_words off: not read, empty lines; saves 11 "
                   "answers per image with a VLM folder).")
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("caption", "identity_words")
    OUTPUT_TOOLTIPS = ("One caption per image, one per line.",
                       "Per image, one per line: the identity traits read with confidence >= 0.5 (skin, face shape, "
                       "eyes, brows, hair style, ...), in the words the base understands. Connect to Apply "
                       "Identity's words.")
    FUNCTION = "describe"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Face images (a batch gives one caption each); any size, centre-cropped."}),
            "max_new_tokens": ("INT", {"default": 90, "min": 1, "max": 512, "tooltip": "Longest caption in tokens."}),
            "keep_model_loaded": _KEEP,
        }, "optional": {
            "face_model": _FACE_MODEL_INPUT,
            "read_identity_words": ("BOOLEAN", {"default": True, "tooltip": (
                "Read the identity_words output (one more reading of each image: 0.1 s with the built-in model, "
                "11 generated answers with a VLM folder). Off when nothing uses that output: it is then empty "
                "lines.")}),
        }}

    def describe(self, images, max_new_tokens, keep_model_loaded, face_model=None, read_identity_words=True):
        from ..core.understand.check import identity_words

        node = self.DISPLAY_NAME
        arr = _images(node, images)
        und = _model(node, face_model, keep_model_loaded)
        captions = [a.text_marked for a in und.describe(arr, int(max_new_tokens))]
        words = [identity_words(und, a) if read_identity_words else "" for a in arr]
        _release(und, keep_model_loaded)
        text = "\n".join(captions)
        return {"ui": {"text": captions}, "result": (text, "\n".join(words))}


class FaceSmithFaceVQA:
    DISPLAY_NAME = "Face VQA (FaceSmith)"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Answers a question about each face (a batch gives one answer per image), shown on the node. "
                   "Answers to questions outside what the model was trained on, or given with probability below "
                   "0.5, are marked '(low confidence ...)' with the reason: a guess is never shown as a fact.")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("answers",)
    OUTPUT_TOOLTIPS = ("One answer per image, one per line.",)
    FUNCTION = "ask"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Face images; each gets its own answer."}),
            "question": ("STRING", {"default": "What colour is the hair?", "multiline": False,
                                    "tooltip": "The question (the trained ones include hair colour and style, "
                                               "expression, glasses, hat, beard, background, skin tone, eye colour "
                                               "and shape, face shape, mole ...)."}),
            "max_new_tokens": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Longest answer in tokens."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX,
                             "tooltip": "Seed (decoding is greedy; kept for backends that sample)."}),
            "keep_model_loaded": _KEEP,
        }, "optional": {"face_model": _FACE_MODEL_INPUT}}

    def ask(self, images, question, max_new_tokens, seed, keep_model_loaded, face_model=None):
        node = self.DISPLAY_NAME
        if not isinstance(question, str) or not question.strip():
            raise input_error(node, "question", "is empty")
        arr = _images(node, images)
        und = _model(node, face_model, keep_model_loaded)
        torch.manual_seed(trainer_seed(seed))
        answers = [a.text_marked for a in und.answer(arr, question.strip(), max_new_tokens=int(max_new_tokens))]
        _release(und, keep_model_loaded)
        return {"ui": {"text": answers}, "result": ("\n".join(answers),)}


class FaceSmithFaceAttributes:
    DISPLAY_NAME = "Face Attributes (FaceSmith)"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Reads every attribute and identity trait of each face with a confidence: a JSON list (one "
                   "object per image: type -> value, answer, confidence, low_confidence) and a table image per face.")
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("attributes_json", "table")
    OUTPUT_TOOLTIPS = ("JSON: one object per image.", "The attributes as a table image, one per input image.")
    FUNCTION = "read"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Face images; each is read on its own."}),
            "keep_model_loaded": _KEEP,
        }, "optional": {"face_model": _FACE_MODEL_INPUT}}

    def read(self, images, keep_model_loaded, face_model=None):
        from ..core.understand.check import attribute_table, read_attributes

        node = self.DISPLAY_NAME
        arr = _images(node, images)
        und = _model(node, face_model, keep_model_loaded)
        seen = read_attributes(und, arr)
        _release(und, keep_model_loaded)
        text = json.dumps(seen, indent=1)
        tables = np.stack([attribute_table(s) for s in seen])
        return {"ui": {"text": [text]}, "result": (text, numpy_to_comfy(tables))}


class FaceSmithCheckAttributes:
    DISPLAY_NAME = "Check Attributes (FaceSmith)"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Compares the attributes read from images (Face Attributes' JSON) with those a prompt asks for "
                   "(SynthFace phrases such as 'with red hair', 'wearing glasses', 'blue eyes', 'mole on chin'): "
                   "passes only when every image shows every asked attribute with at least min_confidence; the "
                   "reasons name what was asked, what was seen and how sure. For an edit, connect the source photo's "
                   "Face Attributes to source_attributes_json: then the attributes not asked must also keep the "
                   "source's values (an unasked change fails).")
    RETURN_TYPES = ("BOOLEAN", "STRING")
    RETURN_NAMES = ("passed", "reasons")
    OUTPUT_TOOLTIPS = ("True when every asked attribute is seen confidently in every image (and, given the "
                       "source's attributes, every other one kept).",
                       "One line per image and problem.")
    FUNCTION = "check"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attributes_json": ("STRING", {"forceInput": True, "tooltip": "Face Attributes' attributes_json output."}),
            "prompt": ("STRING", {"multiline": True, "default": "",
                                  "tooltip": "The prompt the images were made from."}),
            "min_confidence": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                         "tooltip": "A reading below this confidence does not count as seen."}),
        }, "optional": {
            "source_attributes_json": ("STRING", {"forceInput": True,
                                                  "tooltip": "For an edit: Face Attributes of the source photo (one "
                                                             "image). The attributes the prompt does not ask must "
                                                             "keep its values."}),
        }}

    def check(self, attributes_json, prompt, min_confidence, source_attributes_json=None):
        from ..core.understand.check import check_attributes, check_unchanged, requested

        node = self.DISPLAY_NAME
        seen = self._parsed(attributes_json, "attributes_json")
        asked = requested(prompt or "")
        ok, reasons = check_attributes(seen, asked, float(min_confidence))
        if source_attributes_json:
            source = self._parsed(source_attributes_json, "source_attributes_json")
            if len(source) != 1:
                raise input_error(node, "source_attributes_json", f"holds {len(source)} images' attributes; "
                                  "connect the Face Attributes of the one source photo")
            kept, more = check_unchanged(seen, source[0], asked, float(min_confidence))
            ok, reasons = ok and kept, reasons + more
        text = ("PASS" if ok else "FAIL") + "\n" + "\n".join(reasons)
        return {"ui": {"text": [text]}, "result": (bool(ok), text)}

    def _parsed(self, text: str, name: str) -> list[dict]:
        try:
            seen = json.loads(text)
            if isinstance(seen, dict):
                seen = [seen]
            assert isinstance(seen, list) and all(isinstance(s, dict) for s in seen)
        except (json.JSONDecodeError, AssertionError):
            raise input_error(self.DISPLAY_NAME, name, "is not Face Attributes' JSON (a list of objects)") from None
        return seen


class FaceSmithTrainFaceVQA:
    DISPLAY_NAME = "Train Face VQA (FaceSmith)"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Trains a face understanding model on SynthFace VQA + captions with FaceSmith's one training "
                   "loop (progress bar, interrupt keeps a resumable checkpoint, loss graph): the unified model "
                   "(mixture of experts or dense) or a LoRA on a local vision-language model folder. Saves "
                   "models/facesmith/understand/NAME.safetensors.")
    RETURN_TYPES = (FACE_MODEL_TYPE, "IMAGE", "STRING")
    RETURN_NAMES = ("face_model", "loss_graph", "path")
    OUTPUT_TOOLTIPS = ("The trained model.", "Loss curve.", "Where it was saved.")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backend": (["unified", "vlm"], {"default": "unified", "tooltip": "unified: FaceSmith's model; vlm: LoRA "
                                                                              "on vlm_folder."}),
            "arch": (["moe", "dense"], {"default": "moe", "tooltip": "unified: mixture of experts or dense."}),
            "vlm_folder": ("STRING", {"default": "", "tooltip": "backend=vlm: the local model folder."}),
            "steps": ("INT", {"default": 200, "min": 1, "max": 1_000_000,
                              "tooltip": "Optimisation steps (the built-in models used 1000)."}),
            "learning_rate": ("FLOAT", {"default": 2e-3, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": 1e-7,
                                        "tooltip": "AdamW learning rate (warm-up, then cosine decay)."}),
            "pool_identities": ("INT", {"default": 500, "min": 2, "max": 16000,
                                        "tooltip": "SynthFace TRAIN identities rendered for training."}),
            "per_identity": ("INT", {"default": 3, "min": 1, "max": 64, "tooltip": "Renders per identity."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX,
                             "tooltip": "Seed for data and weights (ComfyUI's range; above 2**32-1 it wraps around)."}),
            "resume": ("BOOLEAN", {"default": True, "tooltip": "Continue from this name's last checkpoint."}),
            "name": ("STRING", {"default": "my-face-vqa",
                                "tooltip": "Saved as models/facesmith/understand/NAME.safetensors."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file of this name."}),
        }}

    def train(self, backend, arch, vlm_folder, steps, learning_rate, pool_identities, per_identity, seed, resume,
              name, overwrite):
        from ..core.training.loop import loss_graph
        from ..core.understand.weights import SUBFOLDER

        node = self.DISPLAY_NAME
        name = (name or "").strip()
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise input_error(node, "name", "must be a plain file name")
        root = paths.models_root("facesmith")
        out = safe_join(root, f"{SUBFOLDER}/{name}.safetensors")
        try:
            check_new_file(out, overwrite)
        except FileExistsError as exc:
            raise input_error(node, "name", f"{exc}; turn on 'overwrite' or choose another name") from exc
        out.parent.mkdir(parents=True, exist_ok=True)
        work = safe_join(root, f"{SUBFOLDER}/.work/{name}")
        with interruptible(), grad_enabled():
            if backend == "vlm":
                from ..core.understand.vlm import VLMFolderError
                from ..trainers.understand_vlm import train_vlm_lora

                if not vlm_folder.strip():
                    raise input_error(node, "vlm_folder", "is empty (backend=vlm needs a model folder)")
                try:
                    info = train_vlm_lora(vlm_folder.strip(), out, seed=trainer_seed(seed), steps=int(steps),
                                          lr=float(learning_rate), work_dir=str(work), resume=bool(resume),
                                          overwrite=bool(overwrite), progress=node_progress(node, loss_chart=True))
                except VLMFolderError as exc:
                    raise input_error(node, "vlm_folder", exc) from exc
                history = info["loss_history"]
            else:
                from ..trainers.understand import train_unified

                train_unified(out, arch, seed=trainer_seed(seed), work_dir=str(work), cache_dir=str(work),
                              resume=bool(resume), overwrite=bool(overwrite),
                              progress=node_progress(node, loss_chart=True), steps=int(steps),
                              lr=float(learning_rate), pool_identities=int(pool_identities),
                              per_identity=int(per_identity))
                history = json.loads(out.with_suffix(".json").read_text())["loss_history"]
        from ..core.understand.store import load_face_model

        und = (load_face_model("vlm", vlm_folder=vlm_folder.strip(), lora=str(out)) if backend == "vlm"
               else load_face_model("unified", str(out)))
        graph = torch.from_numpy(np.array(loss_graph(history, title=f"face VQA {name}"))).float() / 255.0
        return (und, graph[None], str(out))


NODE_CLASS_MAPPINGS = {c.__name__: c for c in (FaceSmithLoadFaceModel, FaceSmithFaceDescribe, FaceSmithFaceVQA,
                                                FaceSmithFaceAttributes, FaceSmithCheckAttributes,
                                                FaceSmithTrainFaceVQA)}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
