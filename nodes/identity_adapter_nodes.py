"""Identity adapter nodes (tuning-free identity, IDAdapter): load / train an adapter, apply an identity from FACES
to Generate, save and load an identity without the photos. The maths lives in ``core/identity/adapter*.py``."""
from __future__ import annotations

import logging

import numpy as np

from ..core import paths
from ..core.generate import SEED_MAX
from ..core.formats import check_new_file, safe_join
from .comfy_bridge import grad_enabled, interruptible, node_progress
from .concept_nodes import _exists_text, _file_name, _name_problem, trainer_seed
from .identity_nodes import FACES_TYPE
from .node_errors import input_error

log = logging.getLogger("facesmith")

PIPELINE_TYPE = "FACESMITH_PIPELINE"
CONCEPT_TYPE = "FACESMITH_CONCEPT"
ADAPTER_TYPE = "FACESMITH_IDENTITY_ADAPTER"
IDENTITY_TYPE = "FACESMITH_IDENTITY"
ADAPTER_SUBDIR = "identity"        # <models>/facesmith/identity/NAME.safetensors
IDENTITY_SUBDIR = "identities"     # <models>/facesmith/identities/NAME.safetensors
WORK_SUBDIR = ".work/identity"
BUILTIN_ADAPTER = "identity/synthface-idadapter.safetensors"


def list_adapters() -> list[str]:
    from ..core.identity.adapter import FORMAT

    return paths.list_models_tagged("facesmith", "format", FORMAT, f"{ADAPTER_SUBDIR}/")


def list_identities() -> list[str]:
    from ..core.identity.adapter import IDENTITY_FORMAT

    return paths.list_models_tagged("facesmith", "format", IDENTITY_FORMAT, f"{IDENTITY_SUBDIR}/")


def _file_hash(name: str) -> str:
    """IS_CHANGED for a file read by name: its content hash (an overwritten file is read again)."""
    try:
        return paths.file_signature(paths.find("facesmith", name))
    except ValueError:  # a bad name: the node itself reports it
        return f"bad name: {name}"


class FaceSmithLoadIdentityAdapter:
    DISPLAY_NAME = "Load Identity Adapter (FaceSmith)"
    CATEGORY = "FaceSmith/Identity"
    DESCRIPTION = ("Loads an identity adapter (IDAdapter: tuning-free identity from face photos) from "
                   "models/facesmith/identity/. The adapter carries its own face encoder; it works only with the base "
                   "model it was trained for (the built-in one: SynthFace renders and the built-in base).")
    RETURN_TYPES = (ADAPTER_TYPE,)
    RETURN_NAMES = ("adapter",)
    OUTPUT_TOOLTIPS = ("The identity adapter, for 'Apply Identity (FaceSmith)'.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        names = list_adapters()
        opts = {"tooltip": "An identity adapter .safetensors under models/facesmith/identity/."}
        if BUILTIN_ADAPTER in names:
            opts["default"] = BUILTIN_ADAPTER
        return {"required": {"adapter": (names or ["(none found)"], opts)}}

    @classmethod
    def IS_CHANGED(cls, adapter):
        return _file_hash(adapter)

    def load(self, adapter):
        from ..core.identity.adapter import IdentityAdapter

        try:
            return (IdentityAdapter.load(paths.resolve("facesmith", adapter)),)
        except (FileNotFoundError, ValueError) as exc:
            raise input_error(self.DISPLAY_NAME, "adapter", exc) from exc


# AdapterTrainSettings field -> Train Identity Adapter input (its check() messages start with the field's name)
_INPUT_OF_SETTING = (("identity_p", "identity_words_p"), ("id_weight", "identity_loss_weight"),
                     ("n_refs", "references"), ("batch_size", "batch_size"), ("steps", "steps"))


def trained_with_words(adapter) -> bool:
    """Whether the adapter's training captions named identity traits in words (``--identity-p`` > 0)."""
    return float((adapter.info.get("hyper_parameters") or {}).get("identity_p") or 0) > 0


def checked_faces(node: str, faces, adapter) -> list[str]:
    """The notes an identity made from ``faces`` carries (Face Analysis' own, and a warning, also logged, when a
    real-face detector's faces meet an adapter that knows only SynthFace); empty faces are refused."""
    if not len(faces):
        raise input_error(node, "faces", "hold no face; check 'Face Analysis' (on_no_face) and its report")
    notes = []
    if not faces.synthface_detector and adapter.base_name.startswith("synthface"):
        notes.append("these faces were found by a real-face detector, but this adapter was trained on the built-in "
                     "SynthFace world and only knows SynthFace faces: for real photos load a real base model and an "
                     "identity adapter trained on real faces")
        log.warning("%s: %s", node, notes[-1])
    return notes + list(faces.notes)


class FaceSmithApplyIdentity:
    DISPLAY_NAME = "Apply Identity (FaceSmith)"
    CATEGORY = "FaceSmith/Identity"
    DESCRIPTION = (
        "Turns one or several face photos of ONE person (FACES from 'Face Analysis') into an identity in well under a "
        "second, with no tuning, and hands it to Generate as a concept: write the token (default <identity>) in the "
        "prompt, or 'a person' is replaced by it. weight scales the identity; start_at/end_at limit it to part of the "
        "denoising; a mask limits it to a region (two people: two Apply Identity nodes, two tokens, two masks). "
        "Several photos are mixed (combine). A saved identity ('Load Identity') can be used instead of FACES.")
    RETURN_TYPES = (CONCEPT_TYPE, IDENTITY_TYPE)
    RETURN_NAMES = ("concepts", "identity")
    OUTPUT_TOOLTIPS = ("Concepts for Generate: the connected ones plus this identity.",
                       "The mixed identity (for 'Save Identity'); no photo and no face embedding in it.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        from ..core.identity.adapter import COMBINE_MODES, DEFAULT_TOKEN, DEFAULT_WEIGHT

        return {
            "required": {
                "pipeline": (PIPELINE_TYPE, {"tooltip": "The base pipeline the adapter was trained for."}),
                "adapter": (ADAPTER_TYPE, {"tooltip": "From 'Load Identity Adapter (FaceSmith)'."}),
                "token": ("STRING", {"default": DEFAULT_TOKEN,
                                     "tooltip": "The identity's token in the prompt, like <identity>."}),
                "weight": ("FLOAT", {"default": DEFAULT_WEIGHT, "min": -2.0, "max": 5.0, "step": 0.05,
                                     "tooltip": "Strength of the identity (0 = off; the default was chosen on "
                                                "validation identities)."}),
                "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                       "tooltip": "Fraction of the denoising where the identity starts to act."}),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "Fraction of the denoising where it stops."}),
                "combine": (list(COMBINE_MODES), {
                    "default": "average",
                    "tooltip": "Several photos: average = mixed as the adapter was trained (features averaged, all "
                               "photos attended); norm average = one normalised mean face feature; concat = each "
                               "photo's tokens side by side."}),
            },
            "optional": {
                "faces": (FACES_TYPE, {"tooltip": "Faces of ONE person (one or more photos)."}),
                "identity": (IDENTITY_TYPE, {"tooltip": "A saved identity, used when no faces are connected."}),
                "mask": ("MASK", {"tooltip": "Where the identity acts (white = yes); its first mask is used."}),
                "concepts": (CONCEPT_TYPE, {"tooltip": "Concepts to keep; this identity is appended."}),
                "words": ("STRING", {"forceInput": True, "tooltip": (
                    "Who the person is in words, e.g. Face Describe's identity_words ('olive skin, oval face, "
                    "...'): the token then reads '<token>, words', so the base draws what the words name and the "
                    "adapter carries the rest. Several lines (a batch of photos): each trait takes its most common "
                    "value.")}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start_at=None, end_at=None, token=None):
        if isinstance(start_at, (int, float)) and isinstance(end_at, (int, float)) and start_at > end_at:
            return str(input_error(cls.DISPLAY_NAME, "end_at", f"({end_at}) is before start_at ({start_at})"))
        if isinstance(token, str):
            from ..core.concept.tokens import check_token_text

            try:
                check_token_text(token.strip())
            except ValueError as exc:
                return str(input_error(cls.DISPLAY_NAME, "token", exc))
        return True

    def apply(self, pipeline, adapter, token, weight, start_at, end_at, combine, faces=None, identity=None,
              mask=None, concepts=None, words=None):
        from ..core.identity.adapter import AdapterMismatch, IdentityConditioner
        from ..core.understand.check import merged_words
        from .generate import _concept_list

        node = self.DISPLAY_NAME
        existing = _concept_list(concepts)
        token = token.strip()
        notes = []
        if faces is not None:
            notes += checked_faces(node, faces, adapter)
            try:
                with interruptible():
                    identity = adapter.identity(pipeline, faces.crops, combine)
            except AdapterMismatch as exc:
                raise input_error(node, "adapter", exc) from exc
        elif identity is None:
            raise input_error(node, "faces", "and 'identity' are both unconnected; connect FACES from 'Face "
                                             "Analysis' or a saved identity from 'Load Identity'")
        if words is not None:
            identity = identity.described(pipeline, merged_words(words))
        elif not identity.words and trained_with_words(adapter):
            notes.append("this adapter was trained with words for who the person is: connect Face Describe's "
                         "identity_words to 'words' (without them it follows prompts less well; see the identity "
                         "README)")
        m = None
        if mask is not None:
            m = mask[0] if getattr(mask, "dim", lambda: 2)() == 3 else mask
        try:
            cond = IdentityConditioner(adapter, identity, token=token, weight=float(weight),
                                       start_at=float(start_at), end_at=float(end_at), mask=m)
        except AdapterMismatch as exc:
            raise input_error(node, "identity", exc) from exc
        except ValueError as exc:
            name = "token" if "token" in str(exc) else "end_at" if "start_at" in str(exc) else "mask"
            raise input_error(node, name, exc) from exc
        if any(getattr(x, "token", None) == cond.token for x in existing):
            raise input_error(node, "token", f"{cond.token!r} is already used by a connected concept; set another")
        report = (f"identity {cond.token} from {identity.n_references} face(s) ({identity.combine}), weight "
                  f"{float(weight):g}, steps {float(start_at):g}..{float(end_at):g}"
                  + (", masked" if m is not None else "")
                  + (f", words: {identity.words}" if identity.words else ""))
        return {"ui": {"text": ["\n".join([report] + [f"note: {n}" for n in notes])]},
                "result": (existing + [cond], identity)}


class FaceSmithSaveIdentity:
    DISPLAY_NAME = "Save Identity (FaceSmith)"
    CATEGORY = "FaceSmith/Identity"
    DESCRIPTION = ("Saves a mixed identity as models/facesmith/identities/NAME.safetensors (a few KB: the adapter's "
                   "word vectors and context tokens, no photo and no face embedding), so the person is reused "
                   "without the photos. Existing files are kept unless 'overwrite' is on.")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the identity was saved.",)
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "identity": (IDENTITY_TYPE, {"tooltip": "From 'Apply Identity (FaceSmith)'."}),
            "name": ("STRING", {"default": "my-identity",
                                "tooltip": "Saved as models/facesmith/identities/NAME.safetensors."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file of this name."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name=None):
        problem = _name_problem(name)
        return True if problem is None else str(input_error(cls.DISPLAY_NAME, "name", problem))

    def save(self, identity, name, overwrite):
        node = self.DISPLAY_NAME
        try:
            out = safe_join(paths.models_root("facesmith"), f"{IDENTITY_SUBDIR}/{_file_name(name)}")
            check_new_file(out, overwrite)
        except FileExistsError as exc:
            raise input_error(node, "name", _exists_text(exc, "turn on 'overwrite' or choose another name")) from exc
        except ValueError as exc:
            raise input_error(node, "name", exc) from exc
        path = identity.save(out, overwrite=overwrite)
        return {"ui": {"text": [f"saved {path}"]}, "result": (str(path),)}


class FaceSmithLoadIdentity:
    DISPLAY_NAME = "Load Identity (FaceSmith)"
    CATEGORY = "FaceSmith/Identity"
    DESCRIPTION = "Loads an identity saved by 'Save Identity' (models/facesmith/identities/), for 'Apply Identity'."
    RETURN_TYPES = (IDENTITY_TYPE,)
    RETURN_NAMES = ("identity",)
    OUTPUT_TOOLTIPS = ("The saved identity; connect it to 'Apply Identity' (identity input).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"identity": (list_identities() or ["(none found)"],
                                          {"tooltip": "An identity file under models/facesmith/identities/."})}}

    @classmethod
    def IS_CHANGED(cls, identity):
        return _file_hash(identity)

    def load(self, identity):
        from ..core.identity.adapter import Identity

        try:
            return (Identity.load(paths.resolve("facesmith", identity)),)
        except (FileNotFoundError, ValueError) as exc:
            raise input_error(self.DISPLAY_NAME, "identity", exc) from exc


class FaceSmithTrainIdentityAdapter:
    DISPLAY_NAME = "Train Identity Adapter (FaceSmith)"
    CATEGORY = "FaceSmith/Identity"
    DESCRIPTION = (
        "Trains an identity adapter (IDAdapter) on SynthFace TRAIN identities over the frozen base: each step mixes "
        "several renders of one person (mixed features) and adds a face identity loss scored by the adapter's own "
        "face encoder (not the evaluation judge). Saves models/facesmith/identity/NAME.safetensors; checkpoints let "
        "an interrupted run resume.")
    RETURN_TYPES = (ADAPTER_TYPE, "IMAGE", "STRING")
    RETURN_NAMES = ("adapter", "loss_graph", "path")
    OUTPUT_TOOLTIPS = ("The trained adapter.", "Loss curve.", "Where it was saved.")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE_TYPE, {"tooltip": "The frozen base model the adapter is for."}),
            "synthface_identities": ("INT", {"default": 200, "min": 2, "max": 16000,
                                             "tooltip": "How many SynthFace train identities to render."}),
            "synthface_views": ("INT", {"default": 5, "min": 2, "max": 64,
                                        "tooltip": "Renders per identity (random attributes, pose, light)."}),
            "steps": ("INT", {"default": 100, "min": 1, "max": 1_000_000, "tooltip": "Optimisation steps."}),
            "batch_size": ("INT", {"default": 16, "min": 1, "max": 4096, "tooltip": "Targets per step."}),
            "learning_rate": ("FLOAT", {"default": 1e-3, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": 1e-7,
                                        "tooltip": "AdamW learning rate (warm-up, then cosine decay)."}),
            "references": ("INT", {"default": 4, "min": 1, "max": 16,
                                   "tooltip": "Renders of the same person mixed per target."}),
            "mixed_features": ("BOOLEAN", {"default": True,
                                           "tooltip": "Off (ablation): the one reference is the target itself."}),
            "identity_loss_weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 100.0, "step": 0.05,
                                               "tooltip": "Weight of the face identity loss (0 = off)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX,
                             "tooltip": "Seed for the identities drawn, the initial weights and the noise (the same "
                                        "range as every seed in ComfyUI; above 2**32-1 it wraps around)."}),
            "resume": ("BOOLEAN", {"default": True,
                                   "tooltip": "Continue from this name's last checkpoint if there is one."}),
            "name": ("STRING", {"default": "my-idadapter",
                                "tooltip": "Saved as models/facesmith/identity/NAME.safetensors."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing adapter of this name."}),
        }, "optional": {
            "identity_words_p": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": (
                "Probability that a training caption names each visible identity trait in words (the shipped "
                "adapter's later stages used 0.7): then use the adapter with Face Describe's identity_words "
                "connected to Apply Identity's words.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name=None):
        problem = _name_problem(name)
        return True if problem is None else str(input_error(cls.DISPLAY_NAME, "name", problem))

    def train(self, pipeline, synthface_identities, synthface_views, steps, batch_size, learning_rate, references,
              mixed_features, identity_loss_weight, seed, resume, name, overwrite, identity_words_p=0.0):
        import torch

        from ..core.identity.face_encoder import FaceEncoder
        from ..core.training.checkpoints import RecipeMismatch
        from ..core.training.loop import loss_graph
        from ..trainers.e4t import synthface_images
        from ..trainers.identity_adapter import AdapterTrainSettings, build_face_pool, train_identity_adapter

        node = self.DISPLAY_NAME
        root = paths.models_root("facesmith")
        try:
            out = safe_join(root, f"{ADAPTER_SUBDIR}/{_file_name(name)}")
            check_new_file(out, overwrite)
        except FileExistsError as exc:
            raise input_error(node, "name", _exists_text(exc, "turn on 'overwrite' or choose another name")) from exc
        except ValueError as exc:
            raise input_error(node, "name", exc) from exc
        settings = AdapterTrainSettings(steps=int(steps), batch_size=int(batch_size),
                                        learning_rate=float(learning_rate), n_refs=int(references),
                                        mix=bool(mixed_features), id_weight=float(identity_loss_weight),
                                        identity_p=float(identity_words_p),
                                        seed=trainer_seed(seed),
                                        checkpoint_every=max(10, min(200, int(steps) // 4 or 1)))
        try:
            settings.check()
        except ValueError as exc:  # name the node input the bad setting came from
            text = str(exc)
            name = next((inp for key, inp in _INPUT_OF_SETTING if text.startswith(key)), "steps")
            raise input_error(node, name, exc) from exc
        face_encoder = FaceEncoder.load()
        size = pipeline.native_size
        imgs, ids, attrs = synthface_images(int(synthface_identities), int(synthface_views), trainer_seed(seed),
                                            size, workers=1)
        source = f"synthface train identities={synthface_identities} views={synthface_views} seed={seed}"
        with interruptible(), grad_enabled():
            pool = build_face_pool(pipeline, face_encoder, imgs, ids, attrs,
                                   progress=node_progress(f"{node}: encode"), source=source)
        work_dir = safe_join(root, f"{WORK_SUBDIR}/{out.stem}")
        try:
            with interruptible(), grad_enabled():
                adapter, result = train_identity_adapter(pipeline, face_encoder, pool, settings,
                                                         work_dir=str(work_dir), resume=bool(resume),
                                                         progress=node_progress(node, loss_chart=True))
        except RecipeMismatch as exc:
            raise input_error(node, "resume", f"is on, but the checkpoint {exc.path} of '{name}' was trained with "
                                              f"other settings ({'; '.join(exc.differences)}); turn 'resume' off "
                                              "to start fresh, or choose another name") from exc
        adapter.info.update(base_model=pipeline.name, dataset=source)
        adapter.save(out, overwrite=overwrite)
        graph = torch.from_numpy(np.array(loss_graph(result.loss_history, title=f"identity adapter {out.stem}")))
        return {"ui": {"text": [f"saved {out}"]}, "result": (adapter, (graph.float() / 255.0)[None], str(out))}


NODE_CLASS_MAPPINGS = {
    "FaceSmithLoadIdentityAdapter": FaceSmithLoadIdentityAdapter,
    "FaceSmithApplyIdentity": FaceSmithApplyIdentity,
    "FaceSmithSaveIdentity": FaceSmithSaveIdentity,
    "FaceSmithLoadIdentity": FaceSmithLoadIdentity,
    "FaceSmithTrainIdentityAdapter": FaceSmithTrainIdentityAdapter,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
