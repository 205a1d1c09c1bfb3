"""E4T concept nodes: train / load a domain encoder, embed a concept from one image (E4T or textual inversion),
save it as a ComfyUI embedding + kohya LoRA, and load it back. ``FACESMITH_CONCEPT`` values are lists of concepts
(each a Generate conditioner); Embed/Load append to a connected list."""
from __future__ import annotations

import logging

import numpy as np

from ..core import paths
from ..core.concept.concept import Concept
from ..core.concept.personalize import DEFAULT_TUNING_LR, DESCRIBED_TUNING_STEPS
from ..core.concept.tokens import DEFAULT_TOKEN
from ..core.generate import SEED_MAX
from ..core.formats import OverwriteRefused, check_new_file, read_safetensors_metadata, safe_join
from .comfy_bridge import grad_enabled, interruptible, node_progress
from .node_errors import input_error

log = logging.getLogger("facesmith")

PIPELINE_TYPE = "FACESMITH_PIPELINE"
CONCEPT_TYPE = "FACESMITH_CONCEPT"
ENCODER_TYPE = "FACESMITH_DOMAIN_ENCODER"
ENCODER_SUBDIR = "e4t"  # trained encoders go to <models>/facesmith/e4t/<name>.safetensors
WORK_SUBDIR = ".work/e4t"  # checkpoints (hidden from model lists)
PRECISIONS = ["no", "fp16", "bf16"]
DATASETS = ("synthface", "folder", "images")


def trainer_seed(seed: int) -> int:
    """A node seed (0..2**64-1, ComfyUI's range) as the trainers take it (numpy seeds are 32-bit): the same below
    2**32, wrapped above."""
    return int(seed) % 2**32


def node_error(node: str, problem: object) -> ValueError:
    return ValueError(f"{node}: {problem}")


def _concepts(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out.extend(_concepts(v) if isinstance(v, (list, tuple)) else [v])
        return out
    return [value]


def _exists_text(exc: FileExistsError, hint: str) -> str:
    """A file-exists error told in the node's words (its 'overwrite' input, not a Python argument)."""
    return exc.with_hint(hint) if isinstance(exc, OverwriteRefused) else f"{exc} ({hint})"


def _name_problem(name) -> str | None:
    """Why ``name`` cannot be a model file name (NUL, '..', absolute, too long ...), or None; for VALIDATE_INPUTS,
    so a bad name stops the graph before anything runs."""
    if name is None:
        return None  # linked: checked when the node runs
    if not isinstance(name, str) or not name.strip():
        return "is empty"
    try:
        safe_join("models", _file_name(name))
    except ValueError as exc:
        return str(exc)
    return None


def _file_name(name: str) -> str:
    name = name.strip()
    return name if name.endswith(".safetensors") else name + ".safetensors"


def list_encoders() -> list[str]:
    """Names under models/facesmith/ whose metadata says they are E4T domain encoders."""
    from ..core.concept.encoder import FORMAT

    return paths.list_models_tagged("facesmith", "format", FORMAT)


class FaceSmithTrainDomainEncoder:
    DISPLAY_NAME = "Train Domain Encoder (FaceSmith)"
    CATEGORY = "FaceSmith/Concept"
    DESCRIPTION = (
        "E4T domain tuning: trains an image encoder (on frozen-base VAE + UNet features) that predicts a word "
        "embedding for a placeholder token, together with LoRA weight offsets on the UNet's attention layers, on a "
        "domain dataset (SynthFace train identities, a dataset folder, or an IMAGE batch with captions). Saves "
        "models/facesmith/e4t/NAME.safetensors; checkpoints allow resuming after an interrupt."
    )
    RETURN_TYPES = (ENCODER_TYPE, "IMAGE", "STRING")
    RETURN_NAMES = ("encoder", "loss_graph", "path")
    OUTPUT_TOOLTIPS = ("The trained domain encoder (+ domain LoRA).", "Loss curve.", "Where it was saved.")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE_TYPE, {"tooltip": "The frozen base model the encoder is for."}),
                "dataset": (list(DATASETS), {
                    "default": "synthface",
                    "tooltip": "synthface: render SynthFace TRAIN identities (several views each); folder: a dataset "
                               "folder (metadata.jsonl or image + .txt captions); images: the optional IMAGE input."}),
                "dataset_folder": ("STRING", {"default": "", "tooltip": "Folder path for dataset=folder."}),
                "synthface_identities": ("INT", {"default": 200, "min": 2, "max": 16000,
                                                 "tooltip": "dataset=synthface: how many train identities."}),
                "synthface_views": ("INT", {"default": 4, "min": 2, "max": 64,
                                            "tooltip": "dataset=synthface: views per identity."}),
                "steps": ("INT", {"default": 100, "min": 1, "max": 1_000_000,
                                  "tooltip": "Optimisation steps (the built-in encoder used 17000)."}),
                "batch_size": ("INT", {"default": 16, "min": 1, "max": 4096,
                                       "tooltip": "Domain members per step (reference + target pairs)."}),
                "learning_rate": ("FLOAT", {"default": 2e-3, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": 1e-7,
                                            "tooltip": "AdamW learning rate (warm-up, then cosine decay)."}),
                "rank": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "Domain LoRA rank."}),
                "embedding_reg": ("FLOAT", {"default": 1e-2, "min": 0.0, "max": 100.0, "step": 1e-4,
                                            "round": 1e-6, "tooltip": "L2 penalty on the predicted embedding offset."}),
                "weight_reg": ("FLOAT", {"default": 1e-3, "min": 0.0, "max": 100.0, "step": 1e-4, "round": 1e-6,
                                         "tooltip": "L2 penalty on the LoRA weight offsets."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX,
                                 "tooltip": "Seed for the identities drawn, the initial weights and the noise (the "
                                            "same range as every seed in ComfyUI; above 2**32-1 it wraps around)."}),
                "precision": (PRECISIONS, {"default": "no", "tooltip": "Mixed precision (fp16 needs a GPU)."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": False,
                                                     "tooltip": "Recompute UNet activations: less memory, slower."}),
                "resume": ("BOOLEAN", {"default": True,
                                       "tooltip": "Continue from this name's last checkpoint if there is one."}),
                "name": ("STRING", {"default": "my-e4t", "tooltip": "Saved as models/facesmith/e4t/NAME.safetensors."}),
                "overwrite": ("BOOLEAN", {"default": False,
                                          "tooltip": "Replace an existing encoder file of this name."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "dataset=images: the domain images."}),
                "captions": ("STRING", {"multiline": True, "default": "",
                                        "tooltip": "dataset=images: one caption per line (or one for all)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, name=None, dataset=None, dataset_folder=None):
        """Checks that need no model, at queue time: the file name, and a folder for dataset=folder (ComfyUI skips
        its own choice check for inputs named here, so 'dataset' is checked against the choices too)."""
        problem = _name_problem(name)
        if problem is not None:
            return str(input_error(cls.DISPLAY_NAME, "name", problem))
        if dataset is not None and dataset not in DATASETS:
            return str(input_error(cls.DISPLAY_NAME, "dataset", f"must be one of {list(DATASETS)}, got {dataset!r}"))
        if dataset == "folder" and isinstance(dataset_folder, str) and not dataset_folder.strip():
            return str(input_error(cls.DISPLAY_NAME, "dataset_folder", "is empty (dataset=folder needs a folder "
                                                                       "path)"))
        return True

    def train(self, pipeline, dataset, dataset_folder, synthface_identities, synthface_views, steps, batch_size,
              learning_rate, rank, embedding_reg, weight_reg, seed, precision, gradient_checkpointing, resume, name,
              overwrite, images=None, captions=""):
        import torch

        from ..core.concept.encoder import EncoderConfig
        from ..core.models import native_size
        from ..core.images import comfy_to_numpy
        from ..trainers.e4t import DomainTrainSettings, build_pool, folder_images, synthface_images, \
            train_domain_encoder
        from ..core.training.checkpoints import RecipeMismatch
        from ..core.training.loop import loss_graph

        node = self.DISPLAY_NAME
        if not name or not name.strip():
            raise input_error(node, "name", "is empty")
        root = paths.models_root("facesmith")
        try:
            out = safe_join(root, f"{ENCODER_SUBDIR}/{_file_name(name)}")
        except ValueError as exc:
            raise input_error(node, "name", exc) from exc
        try:
            check_new_file(out, overwrite)
        except FileExistsError as exc:
            raise input_error(node, "name", _exists_text(exc, "turn on 'overwrite' or choose another name")) from exc
        if precision == "fp16" and not torch.cuda.is_available():
            raise input_error(node, "precision", "fp16 needs a CUDA GPU; use 'no' or 'bf16' on the CPU")
        dp = pipeline.pipe
        size = native_size(dp)
        cfg = EncoderConfig.for_pipeline(dp)
        if dataset == "synthface":
            imgs, ids, attrs = synthface_images(synthface_identities, synthface_views, trainer_seed(seed), size,
                                                workers=1)
            caps, source = None, f"synthface train identities={synthface_identities} views={synthface_views}"
        elif dataset == "folder":
            if not dataset_folder.strip():
                raise input_error(node, "dataset_folder", "is empty (dataset=folder needs a folder path)")
            try:
                imgs, ids, caps = folder_images(dataset_folder.strip(), size)
            except (FileNotFoundError, ValueError) as exc:
                raise input_error(node, "dataset_folder", exc) from exc
            attrs, source = None, f"folder {dataset_folder.strip()}"
        else:
            if images is None:
                raise input_error(node, "images", "is not connected (dataset=images needs an IMAGE batch)")
            imgs = comfy_to_numpy(images)
            if imgs.ndim == 3:
                imgs = imgs[None]
            lines = [ln.strip() for ln in (captions or "").splitlines() if ln.strip()]
            if len(lines) not in (0, 1, len(imgs)):
                raise input_error(node, "captions", f"has {len(lines)} lines for {len(imgs)} images; give one per "
                                                    "image, one for all, or none")
            caps = lines * len(imgs) if len(lines) == 1 else (lines or [""] * len(imgs))
            ids, attrs, source = None, None, f"IMAGE batch of {len(imgs)}"
        settings = DomainTrainSettings(steps=int(steps), batch_size=int(batch_size),
                                       learning_rate=float(learning_rate), rank=int(rank), lora_alpha=float(rank),
                                       emb_reg=float(embedding_reg), weight_reg=float(weight_reg),
                                       seed=trainer_seed(seed),
                                       precision=precision, gradient_checkpointing=bool(gradient_checkpointing),
                                       checkpoint_every=max(10, min(250, int(steps) // 4 or 1)))
        try:
            settings.check()
        except ValueError as exc:
            raise node_error(node, exc) from exc
        with interruptible(), grad_enabled():
            pool = build_pool(pipeline, imgs, ids, attrs, caps, cfg=cfg, progress=node_progress(f"{node}: encode"),
                              source=source)
        work_dir = safe_join(root, f"{WORK_SUBDIR}/{out.stem}")
        try:
            with interruptible(), grad_enabled():
                bundle, result = train_domain_encoder(pipeline, pool, settings, work_dir=str(work_dir),
                                                      resume=bool(resume),
                                                      progress=node_progress(node, loss_chart=True))
        except RecipeMismatch as exc:
            raise input_error(node, "resume", f"is on, but the checkpoint {exc.path} of '{name}' was trained with "
                                              f"other settings ({'; '.join(exc.differences)}); turn 'resume' off "
                                              "to start fresh, or choose another name") from exc
        bundle.info.update(base_model=pipeline.name, dataset=dataset)
        bundle.save(out, overwrite=overwrite, dtype=torch.float16)
        graph = torch.from_numpy(np.array(loss_graph(result.loss_history, title=f"E4T domain tuning {out.stem}")))
        resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
        last = f", last loss {result.loss_history[-1]:.4g}" if result.loss_history else ""
        report = f"saved {out}\n{result.steps_done} steps{resumed}{last}"
        return {"ui": {"text": [report]}, "result": (bundle, (graph.float() / 255.0)[None], str(out))}


class FaceSmithLoadDomainEncoder:
    DISPLAY_NAME = "Load Domain Encoder (FaceSmith)"
    CATEGORY = "FaceSmith/Concept"
    DESCRIPTION = "Loads an E4T domain encoder (+ its domain LoRA) from models/facesmith/ (built-in ones included)."
    RETURN_TYPES = (ENCODER_TYPE,)
    RETURN_NAMES = ("encoder",)
    OUTPUT_TOOLTIPS = ("The domain encoder and its domain LoRA, for Embed Concept (method e4t).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        names = list_encoders()
        opts = {"tooltip": "A domain encoder .safetensors under models/facesmith/."}
        if "e4t/synthface-e4t.safetensors" in names:
            opts["default"] = "e4t/synthface-e4t.safetensors"
        return {"required": {"encoder": (names, opts)}}

    @classmethod
    def IS_CHANGED(cls, encoder):
        """The file's content hash: an encoder overwritten under the same name is loaded again."""
        try:
            return paths.file_signature(paths.find("facesmith", encoder))
        except ValueError:  # a name outside the models folder: the node itself reports it
            return ""

    def load(self, encoder):
        from ..core.concept.encoder import DomainEncoder

        node = self.DISPLAY_NAME
        try:
            path = paths.resolve("facesmith", encoder)
            return (DomainEncoder.load(path),)
        except (FileNotFoundError, ValueError) as exc:
            raise input_error(node, "encoder", exc) from exc


FACE_CROP_SCALE = 1.6  # crop side / face-box side: the head-and-shoulders framing the SynthFace domain uses


def _face_crop(node: str, image):
    """A square crop around the most confident face of ``image`` (ComfyUI IMAGE of one picture), framed like the
    domain's training images (side = 1.6 x the face box); a clear error when no face is found."""
    from ..core.images import comfy_to_numpy

    try:
        from ..core.faces import NoFaceError, detect
        from ..core.identity.face_pipeline import SYNTHFACE_ONLY  # face crop runs the built-in SynthFace detector
    except ImportError as exc:
        raise input_error(node, "face_crop", f"is on but face detection is not available ({exc})") from exc
    try:
        faces = detect(image)
    except NoFaceError as exc:
        raise input_error(node, "image", f"{exc} (turn off 'face_crop' or use a picture with a visible face). "
                                         f"{SYNTHFACE_ONLY}") from exc
    except (FileNotFoundError, ImportError) as exc:
        raise input_error(node, "face_crop", f"is on but the face detector could not load: {exc}") from exc
    if not faces:
        raise input_error(node, "image", "has no face that the detector could find (turn off 'face_crop' or use a "
                                         "picture with a visible face). " + SYNTHFACE_ONLY)
    arr = comfy_to_numpy(image)
    arr = arr[0] if arr.ndim == 4 else arr
    x0, y0, x1, y1 = (float(v) for v in faces[0][0][:4])
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * FACE_CROP_SCALE
    h, w = arr.shape[:2]
    half = max(1, int(round(side / 2)))
    pad = np.pad(arr, ((half, half), (half, half), (0, 0)), mode="edge")
    top, left = int(round(cy)) - half + half, int(round(cx)) - half + half
    top, left = min(max(top, 0), pad.shape[0] - 2 * half), min(max(left, 0), pad.shape[1] - 2 * half)
    return np.ascontiguousarray(pad[top:top + 2 * half, left:left + 2 * half])


class FaceSmithEmbedConcept:
    DISPLAY_NAME = "Embed Concept (FaceSmith)"
    CATEGORY = "FaceSmith/Concept"
    DESCRIPTION = (
        "One-image personalisation. e4t: the domain encoder predicts the token's embedding in one forward pass, "
        "then 'steps' optional tuning steps (paper: 5-15) refine embedding + LoRA on the image. textual_inversion: "
        "optimises only the embedding from the class word for 'steps' steps (300-500 typical; no encoder needed). "
        "Write the token in Generate's prompt, e.g. 'a photo of <fs-person> smiling'."
    )
    RETURN_TYPES = (CONCEPT_TYPE,)
    RETURN_NAMES = ("concepts",)
    OUTPUT_TOOLTIPS = ("The connected concepts plus the new one (token, embedding, LoRA), for Generate or Save "
                       "Concept.",)
    FUNCTION = "embed"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE_TYPE, {"tooltip": "The base model the concept is for."}),
                "image": ("IMAGE", {"tooltip": "One reference image."}),
                "method": (["e4t", "textual_inversion"], {
                    "default": "e4t",
                    "tooltip": "e4t: domain encoder (+ tuning steps); textual_inversion: the embedding-only "
                               "optimisation baseline."}),
                "token": ("STRING", {"default": DEFAULT_TOKEN,
                                     "tooltip": "A made-up lowercase word to use in prompts (not a real word)."}),
                "steps": ("INT", {"default": 15, "min": 0, "max": 100_000,
                                  "tooltip": "e4t: tuning steps after the encoder (0 = encoder only; 15 "
                                             f"alone, {DESCRIBED_TUNING_STEPS} with a face model connected, both "
                                             "chosen on validation identities). textual_inversion: optimisation "
                                             "steps (>= 1; 300-500 typical)."}),
                "learning_rate": ("FLOAT", {"default": DEFAULT_TUNING_LR, "min": 1e-7, "max": 1.0, "step": 1e-5,
                                            "round": 1e-7,
                                            "tooltip": f"e4t tuning: {DEFAULT_TUNING_LR:g} (chosen on validation "
                                                       "identities; higher copies more likeness but also more of the "
                                                       "reference's hair, hat and glasses); textual inversion: 5e-3 "
                                                       "typical."}),
                "face_crop": ("BOOLEAN", {"default": False,
                                          "tooltip": "Crop the reference to the detected face first."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX,
                                 "tooltip": "Seed of the tuning noise and timesteps (above 2**32-1 it wraps "
                                            "around)."}),
            },
            "optional": {
                "encoder": (ENCODER_TYPE, {"tooltip": "Needed for method e4t."}),
                "concepts": (CONCEPT_TYPE, {"tooltip": "Concepts to keep; the new one is appended."}),
                "face_model": ("FACESMITH_FACE_MODEL", {
                    "tooltip": "Optional face understanding model (Load Face Model). When connected, the reference "
                               "is described first: the tuning caption names its hair colour, expression, glasses, "
                               "hat, beard and background, so the concept learns the person rather than this "
                               "photo's hair, glasses or hat (prompts that change them work much better); with "
                               "method e4t the words for who the person is (skin, face shape, eyes, ...) are also "
                               "folded into the concept, so the token reads as '<token>, <those words>' in every "
                               "prompt and in the saved embedding (higher likeness)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, token=None):
        """The token's spelling needs no model: checked when the prompt is queued (whether the tokenizer already
        knows it is checked when the node runs)."""
        from ..core.concept.tokens import check_token_text

        if token is None:
            return True  # linked: checked when the node runs
        try:
            check_token_text((token or "").strip())
        except ValueError as exc:
            return str(input_error(cls.DISPLAY_NAME, "token", exc))
        return True

    def embed(self, pipeline, image, method, token, steps, learning_rate, face_crop, seed, encoder=None,
              concepts=None, face_model=None):
        from ..core.concept.concept import BaseMismatch
        from ..core.concept.personalize import embed_e4t
        from ..core.concept.textual_inversion import embed_textual_inversion
        from ..core.concept.tokens import check_token_free, check_token_text

        node = self.DISPLAY_NAME
        existing = _concepts(concepts)
        token = (token or "").strip()
        try:
            check_token_text(token)
            check_token_free(pipeline.pipe.tokenizer, token)
        except ValueError as exc:
            raise input_error(node, "token", exc) from exc
        if any(c.token == token for c in existing):
            raise input_error(node, "token", f"{token!r} is already used by a connected concept; give each concept "
                                             "its own token")
        if image is None or getattr(image, "ndim", 0) not in (3, 4):
            raise input_error(node, "image", "must be an IMAGE")
        if image.ndim == 4 and image.shape[0] != 1:
            raise input_error(node, "image", f"holds {image.shape[0]} images; connect exactly one reference image")
        if face_crop:
            image = _face_crop(node, image)
        progress = node_progress(node, loss_chart=True)  # tuning steps run the one training loop: live chart
        if method == "e4t" and encoder is None:
            raise input_error(node, "encoder", "is not connected (method e4t needs a domain encoder; use 'Load Domain "
                                               "Encoder')")
        if method == "textual_inversion" and int(steps) < 1:
            raise input_error(node, "steps", "must be >= 1 for textual_inversion (300-500 typical)")
        if method not in ("e4t", "textual_inversion"):
            raise input_error(node, "method", f"must be e4t or textual_inversion, got {method!r}")
        kw = {}
        if face_model is not None:
            from ..core.understand.check import caption_and_words, tuning_caption

            if method == "e4t":
                kw["caption"], kw["words"] = caption_and_words(face_model, image)
            else:
                kw["caption"] = tuning_caption(face_model, image)
            log.info("%s: tuning caption %r, identity words %r", node, kw["caption"], kw.get("words", ""))
        try:
            with interruptible(), grad_enabled():
                if method == "e4t":
                    c = embed_e4t(encoder, pipeline, image, token=token, steps=int(steps), lr=float(learning_rate),
                                  seed=trainer_seed(seed), progress=progress, **kw)
                else:
                    c = embed_textual_inversion(pipeline, image, token=token, steps=int(steps),
                                                lr=float(learning_rate), seed=trainer_seed(seed), progress=progress,
                                                **kw)
        except BaseMismatch as exc:
            raise node_error(node, exc) from exc
        return (existing + [c],)


class FaceSmithSaveConcept:
    DISPLAY_NAME = "Save Concept (FaceSmith)"
    CATEGORY = "FaceSmith/Concept"
    DESCRIPTION = (
        "Saves each concept as a ComfyUI embedding models/embeddings/NAME.safetensors (use 'embedding:NAME' in "
        "ComfyUI prompts) and, for E4T, its LoRA models/loras/NAME.safetensors in kohya format (load it with "
        "ComfyUI's LoraLoader). Several concepts are saved as NAME, NAME_2, ... Existing files are kept unless "
        "'overwrite' is on."
    )
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("embedding_path", "lora_path")
    OUTPUT_TOOLTIPS = ("The embedding files written, one path per line.",
                       "The LoRA files written, one line per concept (empty where a concept has no LoRA).")
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "concepts": (CONCEPT_TYPE, {"tooltip": "The concept(s) to save."}),
            "name": ("STRING", {"default": "my-concept",
                                "tooltip": "File name: models/embeddings/NAME.safetensors and models/loras/NAME."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace existing files of this name."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name=None):
        problem = _name_problem(name)
        return True if problem is None else str(input_error(cls.DISPLAY_NAME, "name", problem))

    def save(self, concepts, name, overwrite):
        from ..core.concept.export import save_concept

        node = self.DISPLAY_NAME
        items = _concepts(concepts)
        if not items:
            raise input_error(node, "concepts", "is empty")
        if not name or not name.strip():
            raise input_error(node, "name", "is empty")
        stem = _file_name(name)[: -len(".safetensors")]
        targets = []
        try:
            for i, c in enumerate(items):
                file = _file_name(stem if i == 0 else f"{stem}_{i + 1}")
                emb = safe_join(paths.models_root("embeddings"), file)
                lora = safe_join(paths.models_root("loras"), file) if c.lora else None
                for f in (emb, lora):
                    if f is not None:
                        check_new_file(f, overwrite)
                targets.append((c, emb, lora))
        except FileExistsError as exc:
            raise input_error(node, "name", _exists_text(exc, "turn on 'overwrite' to replace it")) from exc
        except ValueError as exc:
            raise input_error(node, "name", exc) from exc
        emb_paths, lora_paths = [], []
        for c, emb, lora in targets:
            e, lp = save_concept(c, emb, lora, overwrite=overwrite)
            emb_paths.append(str(e))
            lora_paths.append(str(lp) if lp else "")
        text = "\n".join(emb_paths), "\n".join(lora_paths)
        return {"ui": {"text": [f"saved {p}" for p in emb_paths + [p for p in lora_paths if p]]}, "result": text}


class FaceSmithLoadConcept:
    DISPLAY_NAME = "Load Concept (FaceSmith)"
    CATEGORY = "FaceSmith/Concept"
    DESCRIPTION = (
        "Loads a concept saved by 'Save Concept' (embedding + optional kohya LoRA) back into a FACESMITH_CONCEPT. "
        "'auto' picks the LoRA named in the embedding's metadata; LoRAs of other tools (kohya, diffusers, peft keys) "
        "are read too."
    )
    RETURN_TYPES = (CONCEPT_TYPE,)
    RETURN_NAMES = ("concepts",)
    OUTPUT_TOOLTIPS = ("The connected concepts plus the loaded one, for Generate.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embedding": (paths.list_models("embeddings") or ["(none found)"], {
                    "tooltip": "A concept embedding under models/embeddings/."}),
                "lora": (["auto", "none"] + paths.list_models("loras"), {
                    "default": "auto",
                    "tooltip": "auto: the LoRA named in the embedding's metadata; none: embedding only."}),
                "token": ("STRING", {"default": "", "tooltip": "Empty: the token stored in the file."}),
                "lora_strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                            "tooltip": "Multiplies the concept LoRA's strength."}),
            },
            "optional": {"concepts": (CONCEPT_TYPE, {"tooltip": "Concepts to keep; the loaded one is appended."})},
        }

    @classmethod
    def IS_CHANGED(cls, embedding, lora, token=None, lora_strength=None, concepts=None):
        """Hash of the embedding file and of the LoRA it reads ('auto': the one named in the embedding), so a
        concept saved again under the same name is loaded again instead of served from ComfyUI's cache."""
        try:
            emb = paths.find("embeddings", embedding)
            lora_path = None
            if lora == "auto" and emb is not None:
                try:
                    named = read_safetensors_metadata(emb).get("lora_file")
                except Exception:  # an unreadable file: the node reports it when it runs
                    named = None
                lora_path = paths.find("loras", named) if named else None
            elif lora not in ("auto", "none"):
                lora_path = paths.find("loras", lora)
        except ValueError:  # a name outside the models folders: the node itself reports it
            return ""
        return paths.file_signature(emb, lora_path)

    def load(self, embedding, lora, token, lora_strength, concepts=None):
        from ..core.concept.export import load_concept

        node = self.DISPLAY_NAME
        existing = _concepts(concepts)
        try:
            emb_path = paths.resolve("embeddings", embedding)
        except (FileNotFoundError, ValueError) as exc:
            raise input_error(node, "embedding", exc) from exc
        lora_path = None
        if lora == "auto":
            meta = read_safetensors_metadata(emb_path)
            if meta.get("lora_file"):
                lora_path = paths.find("loras", meta["lora_file"])
                if lora_path is None:
                    raise input_error(node, "lora", f"is 'auto' and the embedding names LoRA {meta['lora_file']!r}, "
                                                    f"which is not in {paths.search_roots('loras')[0]}")
        elif lora != "none":
            try:
                lora_path = paths.resolve("loras", lora)
            except (FileNotFoundError, ValueError) as exc:
                raise input_error(node, "lora", exc) from exc
        try:
            c = load_concept(emb_path, lora_path, token=(token or "").strip() or None)
            if c.lora and float(lora_strength) != 1.0:
                c = c.with_scale(c.lora_scale * float(lora_strength))
        except ValueError as exc:
            raise input_error(node, "token" if "token" in str(exc) else "embedding", exc) from exc
        if any(x.token == c.token for x in existing):
            raise input_error(node, "token", f"{c.token!r} is already used by a connected concept; set another token")
        return (existing + [c],)


NODE_CLASS_MAPPINGS = {
    "FaceSmithTrainDomainEncoder": FaceSmithTrainDomainEncoder,
    "FaceSmithLoadDomainEncoder": FaceSmithLoadDomainEncoder,
    "FaceSmithEmbedConcept": FaceSmithEmbedConcept,
    "FaceSmithSaveConcept": FaceSmithSaveConcept,
    "FaceSmithLoadConcept": FaceSmithLoadConcept,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
