"""Rendered data for the judges: training pools (TRAIN identities only), held-out evaluation sets, and the
evaluation protocols whose numbers are stored with the weights and re-measured by benchmarks.

Verification protocol (hard on purpose): half the pairs are the SAME identity with independently drawn, different
attribute combinations and different views; the other half are two DIFFERENT identities with the SAME attributes
(same hair colour, expression, glasses, hat, beard, background) and different views. A judge that keyed on
attributes would fail both halves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..synthface.render import (
    ATTRIBUTES, TRAIT_VOCAB, identity_traits, landmarks, random_attributes, render,
)
from ..synthface.splits import identities, require_split

HEADS: dict[str, list] = {**ATTRIBUTES, **TRAIT_VOCAB}  # attribute heads first, then identity facts
ATTRIBUTE_HEADS = list(ATTRIBUTES)
FACT_HEADS = list(TRAIT_VOCAB)


def label_row(identity: int, attrs: dict) -> list[int]:
    facts = identity_traits(identity).facts()
    return [HEADS[k].index(attrs[k] if k in ATTRIBUTES else facts[k]) for k in HEADS]


def face_box(identity: int, attrs: dict, size: int, view: int | None) -> np.ndarray:
    """``[x1, y1, x2, y2]`` of the face outline (forehead to chin, cheek to cheek) in pixel coordinates."""
    from .align import similarity_transform

    t = identity_traits(identity)
    S = size * 4
    cx, cy, fw, fh = S / 2, S * 0.5, t.face_w * S, t.face_h * S
    corners = np.array([[cx - fw, cy - fh], [cx + fw, cy - fh], [cx - fw, cy + fh], [cx + fw, cy + fh]])
    corners = (corners + 0.5) / 4 - 0.5  # PIL fill offset, then output pixel coordinates (as landmarks())
    if view is not None:
        m = similarity_transform(landmarks(identity, attrs, size, None), landmarks(identity, attrs, size, view))
        corners = corners @ m[:, :2].T + m[:, 2]
    return np.array([*corners.min(0), *corners.max(0)], dtype=np.float32)


@dataclass
class Pool:
    images: np.ndarray     # uint8 (N, S, S, 3)
    landmarks: np.ndarray  # float32 (N, 5, 2)
    boxes: np.ndarray      # float32 (N, 4)
    identity: np.ndarray   # int64 (N,) SynthFace identity ids
    labels: np.ndarray     # int64 (N, len(HEADS))

    def __len__(self):
        return len(self.images)

    def save(self, path) -> None:
        from ..formats import atomic_path

        with atomic_path(path, overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=self.images, landmarks=self.landmarks, boxes=self.boxes,
                                    identity=self.identity, labels=self.labels)

    @classmethod
    def load(cls, path) -> "Pool":
        z = np.load(path, allow_pickle=False)
        return cls(z["images"], z["landmarks"], z["boxes"], z["identity"], z["labels"])


def render_samples(ids, attrs_list, views, size: int = 64, progress=None) -> Pool:
    n = len(ids)
    images = np.zeros((n, size, size, 3), np.uint8)
    lms = np.zeros((n, 5, 2), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    labels = np.zeros((n, len(HEADS)), np.int64)
    for i, (ident, at, v) in enumerate(zip(ids, attrs_list, views)):
        images[i] = render(int(ident), at, size, view=v)
        lms[i] = landmarks(int(ident), at, size, v)
        boxes[i] = face_box(int(ident), at, size, v)
        labels[i] = label_row(int(ident), at)
        if progress is not None and (i + 1) % 500 == 0:
            progress.update(i + 1, n)
    return Pool(images, lms, boxes, np.asarray(ids, dtype=np.int64), labels)


def training_pool(n_identities: int, per_identity: int, seed: int = 0, size: int = 64, progress=None) -> Pool:
    """``per_identity`` renders (random attributes, random views) of each of ``n_identities`` TRAIN identities."""
    rng = np.random.default_rng([seed, 101])
    train_ids = np.array(identities("train"))
    chosen = rng.choice(train_ids, size=min(n_identities, len(train_ids)), replace=False)
    ids, attrs, views = [], [], []
    for ident in chosen:
        require_split(int(ident), "train")
        for _ in range(per_identity):
            ids.append(int(ident))
            attrs.append(random_attributes(rng))
            views.append(int(rng.integers(1 << 30)))
    order = rng.permutation(len(ids))
    return render_samples([ids[i] for i in order], [attrs[i] for i in order], [views[i] for i in order], size,
                          progress)


def eval_images(split: str, n: int, seed: int, size: int = 64) -> Pool:
    """``n`` renders of ``split`` identities with random attributes and views."""
    rng = np.random.default_rng([seed, 202, len(split)])
    ids_all = identities(split)
    ids = [int(ids_all[int(rng.integers(len(ids_all)))]) for _ in range(n)]
    attrs = [random_attributes(rng) for _ in range(n)]
    views = [int(rng.integers(1 << 30)) for _ in range(n)]
    return render_samples(ids, attrs, views, size)


def eval_pairs(split: str, n_pairs: int, seed: int, size: int = 64) -> tuple[Pool, Pool, np.ndarray]:
    """``(first, second, same)`` for the verification protocol above; ``same`` is a bool array."""
    rng = np.random.default_rng([seed, 303, len(split)])
    ids_all = identities(split)
    a_ids, b_ids, a_at, b_at, same = [], [], [], [], []
    for k in range(n_pairs):
        i = int(ids_all[int(rng.integers(len(ids_all)))])
        at = random_attributes(rng)
        if k % 2 == 0:  # same identity, different attributes
            while True:
                bt = random_attributes(rng)
                if bt != at:
                    break
            j = i
        else:  # different identity, same attributes
            while True:
                j = int(ids_all[int(rng.integers(len(ids_all)))])
                if j != i:
                    break
            bt = dict(at)
        a_ids.append(i), b_ids.append(j), a_at.append(at), b_at.append(bt), same.append(k % 2 == 0)
    va = [int(v) for v in rng.integers(1 << 30, size=n_pairs)]
    vb = [int(v) for v in rng.integers(1 << 30, size=n_pairs)]
    return (render_samples(a_ids, a_at, va, size), render_samples(b_ids, b_at, vb, size), np.array(same))


def best_threshold(sims: np.ndarray, same: np.ndarray) -> float:
    """The cosine threshold with the highest accuracy on (``sims``, ``same``) (midpoint between neighbours)."""
    order = np.sort(np.unique(sims))
    cands = np.concatenate([[order[0] - 1e-3], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-3]])
    accs = [np.mean((sims > c) == same) for c in cands]
    return float(cands[int(np.argmax(accs))])


def attribute_accuracy(judge, pool: Pool) -> dict:
    """Per-head accuracy of an :class:`AttributeJudge` on ``pool``; ``mean`` over the 6 attributes, ``facts_mean``
    over the identity facts."""
    pred = judge.predict_indices(pool.images)
    per = {k: float(np.mean(pred[:, i] == pool.labels[:, i])) for i, k in enumerate(HEADS)}
    return {"per_head": per, "mean": float(np.mean([per[k] for k in ATTRIBUTE_HEADS])),
            "facts_mean": float(np.mean([per[k] for k in FACT_HEADS])), "n": len(pool)}


def pair_similarities(recognizer, first: Pool, second: Pool) -> np.ndarray:
    ea = recognizer.embed(first.images)
    eb = recognizer.embed(second.images)
    return (ea * eb).sum(1).numpy()


def verification(recognizer, split: str, n_pairs: int, seed: int, threshold: float | None = None) -> dict:
    """Accuracy on ``n_pairs`` pairs of ``split`` identities at ``threshold`` (the recognizer's own by default)."""
    a, b, same = eval_pairs(split, n_pairs, seed)
    sims = pair_similarities(recognizer, a, b)
    thr = recognizer.threshold if threshold is None else threshold
    return {"accuracy": float(np.mean((sims > thr) == same)), "threshold": float(thr), "n_pairs": int(n_pairs),
            "same_mean": float(sims[same].mean()), "different_mean": float(sims[~same].mean()),
            "true_accept": float(np.mean(sims[same] > thr)), "true_reject": float(np.mean(sims[~same] <= thr)),
            "best_possible_accuracy": float(np.mean((sims > best_threshold(sims, same)) == same))}


def detection_accuracy(detector, pool: Pool) -> dict:
    """``detection_rate``: share of images where the best face has landmark error < 0.1 of the eye-mouth distance;
    ``found_rate``: share where it overlaps the true face box with IoU > 0.5; mean normalised landmark error and
    box IoU."""
    found, any_face, nme, ious = 0, 0, [], []
    for img, lm, box in zip(pool.images, pool.landmarks, pool.boxes):
        faces = detector.detect(img)
        if not faces:
            nme.append(np.inf)
            ious.append(0.0)
            continue
        f = faces[0]
        scale = np.linalg.norm((lm[0] + lm[1]) / 2 - (lm[3] + lm[4]) / 2)
        e = float(np.mean(np.linalg.norm(f.kps - lm, axis=1)) / scale)
        nme.append(e)
        ix = max(0.0, min(f.box[2], box[2]) - max(f.box[0], box[0]))
        iy = max(0.0, min(f.box[3], box[3]) - max(f.box[1], box[1]))
        inter = ix * iy
        union = (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
        ious.append(float(inter / union))
        found += e < 0.1
        any_face += ious[-1] > 0.5
    nme = np.array(nme)
    return {"detection_rate": float(found / len(pool)), "found_rate": float(any_face / len(pool)), "mean_nme": float(np.mean(nme[np.isfinite(nme)]))
            if np.isfinite(nme).any() else float("inf"), "mean_iou": float(np.mean(ious)), "n": len(pool)}
