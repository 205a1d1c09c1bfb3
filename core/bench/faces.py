"""Benchmark ``faces``: the face pipeline on the real photos that ship inside wheels (no download, no data set).

- ``detection``: per detector (built-in SynthFace, MTCNN, dlib, each insightface pack present): share of the 100
  face crops of scikit-image's ``lfw_subset`` (25x25 grayscale) where a face is found, share of its 100 non-face
  crops where one is (false detections), the share found only by the padded retry, faces found in
  ``skimage.data.astronaut()`` (1 person) and in insightface's group photo ``data/images/t1.jpg`` (6 people);
- ``recognition_real``: with a recognizer trained on real faces (an insightface pack where one is present, else
  dlib's), each person of the group photo and the astronaut, seen in the original photo, against the same face
  under changes (head crop, 2x zoom, horizontal flip, darker, brighter, gamma, low contrast) and against the other
  people of the group photo: does the same face always score higher than any two different people?
- ``recognition_synthface_on_real``: the same with the built-in SynthFace recognizer on the same aligned faces, to
  say honestly how it does on real people.

Pipeline defaults (detection size 640, padded retry on). No embedding is written: only scores and counts.
"""
from __future__ import annotations

import os
import time

import numpy as np

T1_PEOPLE = 6  # counted by eye in insightface's t1.jpg
VARIANTS = ("head_crop", "zoom_2x", "hflip", "darker", "brighter", "gamma_1.8", "low_contrast")


def real_photos() -> dict:
    """``{"lfw_faces": [...], "lfw_non_faces": [...], "astronaut": img, "t1": img}`` as uint8 arrays."""
    from PIL import Image
    from skimage import data

    try:
        import insightface
    except ImportError as exc:
        raise ImportError("bench faces needs insightface's bundled group photo (data/images/t1.jpg): "
                          "pip install --no-deps insightface") from exc
    lfw = (np.clip(data.lfw_subset(), 0, 1) * 255).round().astype(np.uint8)
    t1 = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    return {"lfw_faces": list(lfw[:100]), "lfw_non_faces": list(lfw[100:]), "astronaut": data.astronaut().copy(),
            "t1": np.asarray(Image.open(t1).convert("RGB"))}


def detectors_to_run() -> list:
    from ..identity import wheel_models
    from ..identity.insightface_pack import insightface_available, user_packs

    out = [("synthface", "synthface")]
    if wheel_models.mtcnn_available():
        out.append(("mtcnn", "synthface"))
    if wheel_models.dlib_available():
        out.append(("dlib", "synthface"))
    if insightface_available():
        out += [("insightface", p) for p in user_packs()]
    return out


def _detection(kind: str, pack: str, photos: dict, n: int) -> dict:
    from ..identity import face_pipeline as fp

    settings = fp.FaceSettings(detector=kind, recognizer="none", pack=pack)
    t0 = time.time()
    faces = fp.analyze(photos["lfw_faces"][:n], settings, on_no_face="skip", select="all")
    per_crop = (time.time() - t0) / n
    non = fp.analyze(photos["lfw_non_faces"][:n], settings, on_no_face="skip", select="all")
    scenes = fp.analyze([photos["astronaut"], photos["t1"]], settings, on_no_face="skip", select="all")
    found = np.array(faces.found) > 0
    retried = np.zeros(n, bool)
    retried[faces.retried] = True
    return {
        "detector": faces.detector_label,
        "lfw_face_detection_rate": float(found.mean()),
        "lfw_found_only_by_padded_retry": float((found & retried).mean()),
        "lfw_non_face_false_detection_rate": float((np.array(non.found) > 0).mean()),
        "astronaut_faces_found": scenes.found[0],
        "t1_faces_found": scenes.found[1],
        "t1_people": T1_PEOPLE,
        "seconds_per_lfw_crop": round(per_crop, 4),
    }


def _variants(img: np.ndarray, box) -> dict:
    """The face in ``box`` of ``img`` under changes, each as its own image (one dominant face)."""
    from PIL import Image

    h, w = img.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 2.2
    l, t = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    r, b = min(w, round(cx + side / 2)), min(h, round(cy + side / 2))
    crop = np.ascontiguousarray(img[t:b, l:r])
    f = crop.astype(np.float32) / 255.0
    as_u8 = lambda a: (np.clip(a, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
    return {
        "head_crop": crop,
        "zoom_2x": np.asarray(Image.fromarray(crop).resize((crop.shape[1] * 2, crop.shape[0] * 2), Image.BILINEAR)),
        "hflip": np.ascontiguousarray(crop[:, ::-1]),
        "darker": as_u8(f * 0.5),
        "brighter": as_u8(f * 1.5),
        "gamma_1.8": as_u8(f ** 1.8),
        "low_contrast": as_u8(0.5 * f + 0.25),
    }


def _scores(ref, variants: dict, faces_by_variant: dict, people: int) -> dict:
    """Same-face and different-people cosine figures from reference embeddings ``ref`` (people first: the group
    photo's ``people`` persons, then others) and each variant's embeddings (one per person, None when missed)."""
    cross = (ref[:people] @ ref[:people].T).numpy()
    different = cross[~np.eye(people, dtype=bool)]
    per_variant, same_all, beats = {}, [], []
    for name in variants:
        vals = []
        for k, e in enumerate(faces_by_variant[name]):
            if e is None:
                continue
            s = float(e @ ref[k])
            vals.append(s)
            others = np.delete(cross[k], k) if k < people else (ref[:people] @ ref[k]).numpy()
            beats.append(s > float(others.max()))
        per_variant[name] = {"mean": float(np.mean(vals)) if vals else None,
                             "min": float(np.min(vals)) if vals else None, "faces_found": len(vals)}
        same_all += vals
    return {
        "same_face_min": float(np.min(same_all)), "same_face_mean": float(np.mean(same_all)),
        "different_people_max": float(different.max()), "different_people_mean": float(different.mean()),
        "same_face_always_above_every_different_pair": bool(np.min(same_all) > different.max()),
        "share_of_variants_scoring_above_that_persons_best_other_match": float(np.mean(beats)),
        "per_variant": per_variant,
    }


def _recognition(photos: dict, detector: str, recognizer: str, pack: str) -> dict:
    """Embed the group photo's people and the astronaut, then each one's variants, with ``recognizer``."""
    from ..identity import face_pipeline as fp

    settings = fp.FaceSettings(detector=detector, recognizer=recognizer, pack=pack)
    group = fp.analyze(photos["t1"], settings, select="all")
    astro = fp.analyze(photos["astronaut"], settings)
    if len(group) != T1_PEOPLE:
        return {"error": f"the {group.detector_label} found {len(group)} faces in t1.jpg, not {T1_PEOPLE}"}
    import torch

    ref = torch.cat([group.embeddings, astro.embeddings])
    sources = [(photos["t1"], b) for b in group.boxes] + [(photos["astronaut"], astro.boxes[0])]
    by_variant = {name: [] for name in VARIANTS}
    for img, box in sources:
        for name, v in _variants(img, box).items():
            f = fp.analyze(v, settings, on_no_face="skip")
            by_variant[name].append(f.embeddings[0] if len(f) else None)
    out = {"detector": group.detector_label, "recognizer": group.recognizer_label,
           "same_person_threshold": group.threshold, "people": T1_PEOPLE + 1,
           "different_pairs": T1_PEOPLE * (T1_PEOPLE - 1) // 2, "variants": list(VARIANTS)}
    out.update(_scores(ref, VARIANTS, by_variant, T1_PEOPLE))
    if group.threshold is not None:
        cross = (ref[:T1_PEOPLE] @ ref[:T1_PEOPLE].T).numpy()[~np.eye(T1_PEOPLE, dtype=bool)]
        same = [float(e @ ref[k]) for name in VARIANTS for k, e in enumerate(by_variant[name]) if e is not None]
        out["verification_at_threshold"] = {"same_face_accepted": float(np.mean(np.array(same) > group.threshold)),
                                            "different_people_rejected": float(np.mean(cross <= group.threshold))}
    return out


def run(quick: bool = False) -> dict:
    from ..identity import wheel_models
    from ..identity.insightface_pack import insightface_available, user_packs

    photos = real_photos()
    n = 30 if quick else 100
    detection = {}
    for kind, pack in detectors_to_run():
        key = kind if kind != "insightface" else f"insightface:{pack}"
        detection[key] = _detection(kind, pack, photos, n)
    metrics = {"detection": detection, "lfw_crops_per_class": n}
    packs = user_packs() if insightface_available() else []
    if packs:
        real = ("insightface", "insightface", packs[0])
    elif wheel_models.dlib_available():
        real = ("mtcnn" if wheel_models.mtcnn_available() else "dlib", "dlib", "synthface")
    else:
        real = None
    if real is None:
        metrics["recognition_real"] = {"skipped": "no recognizer trained on real faces: put an insightface pack in "
                                                  "models/insightface/models/<name>/ or pip install dlib-bin "
                                                  "face-recognition-models"}
    else:
        metrics["recognition_real"] = _recognition(photos, *real)
    synth_det = real[0] if real else ("mtcnn" if wheel_models.mtcnn_available() else None)
    if synth_det is not None:
        metrics["recognition_synthface_on_real"] = _recognition(photos, synth_det, "synthface",
                                                                real[2] if real else "synthface")
    return metrics
