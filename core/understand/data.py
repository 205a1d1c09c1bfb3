"""The face dataset in UniF2ace-130K's shape, from SynthFace, and sequences for the unified model.

A record is one image with a fine-grained caption (every identity trait and attribute) and VQA pairs over all 19
question types. Pools are rendered once (``render_many``) from one split's identities and cached as ``.npz``;
training uses TRAIN identities, measuring uses HELD-OUT ones (``splits.py``). ``read_face_folder`` reads a user's
folder of real images with a JSONL of captions and question/answer pairs into the same records.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..formats import atomic_path
from ..synthface.captions import caption as make_caption
from ..synthface.dataset import IMAGE_SUFFIXES, render_many
from ..synthface.render import ATTRIBUTES, identity_traits, random_attributes
from ..synthface.splits import identities, require_split
from .questions import PHRASINGS, TYPES, WordTokenizer, answer_word, truth, values


@dataclass
class FacePool:
    """Rendered images with their labels: ``labels[i, j]`` is the value index of question type ``TYPES[j]``."""
    images: np.ndarray          # uint8 (N, 64, 64, 3)
    identity: np.ndarray        # (N,)
    labels: np.ndarray          # int64 (N, len(TYPES))
    split: str = "train"

    def __len__(self) -> int:
        return len(self.images)

    def attributes(self, i: int) -> dict:
        return {k: values(k)[int(self.labels[i, TYPES.index(k)])] for k in ATTRIBUTES}

    def facts(self, i: int) -> dict:
        return {k: values(k)[int(self.labels[i, TYPES.index(k)])] for k in TYPES if k not in ATTRIBUTES}

    def caption(self, i: int) -> str:
        return make_caption(self.attributes(i), identity=self.facts(i))

    def record(self, i: int) -> dict:
        """One record in UniF2ace-130K's shape: caption + one QA pair per question type (canonical phrasing)."""
        attrs, facts = self.attributes(i), self.facts(i)
        return {"identity": int(self.identity[i]), "caption": make_caption(attrs, identity=facts),
                "qa": [{"type": t, "question": PHRASINGS[t][0], "answer": answer_word(t, truth(t, attrs, facts))}
                       for t in TYPES]}


def label_row(attrs: dict, facts: dict) -> list[int]:
    return [values(t).index(truth(t, attrs, facts)) for t in TYPES]


def build_pool(split: str, n_identities: int, per_identity: int, seed: int = 0, cache_dir: str | None = None,
               workers: int = 0) -> FacePool:
    """``per_identity`` renders (random attributes and views) of ``n_identities`` identities of ``split``."""
    key = hashlib.sha256(json.dumps([split, n_identities, per_identity, seed, 1]).encode()).hexdigest()[:12]
    cached = Path(cache_dir) / f"understand-pool-{split}-{key}.npz" if cache_dir else None
    if cached is not None and cached.exists():
        z = np.load(cached)
        return FacePool(z["images"], z["identity"], z["labels"], split)
    rng = np.random.default_rng([seed, 17, len(split)])
    ids = identities(split)
    chosen = rng.choice(ids, size=min(n_identities, len(ids)), replace=False)
    jobs, idents, labels = [], [], []
    for i in chosen:
        require_split(int(i), split)
        facts = identity_traits(int(i)).facts()
        for _ in range(per_identity):
            attrs = random_attributes(rng)
            jobs.append((int(i), attrs, int(rng.integers(1 << 30))))
            idents.append(int(i))
            labels.append(label_row(attrs, facts))
    images = render_many(jobs, 64, workers=workers)
    pool = FacePool(images, np.asarray(idents, np.int64), np.asarray(labels, np.int64), split)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached, overwrite=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=pool.images, identity=pool.identity, labels=pool.labels)
    return pool


def to_model_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------------- sequences


@dataclass
class Batch:
    tokens: torch.Tensor                # (B, T) long
    targets: torch.Tensor               # (B, T) long, -100 where no loss
    group: torch.Tensor                 # (B,) 0 understanding / 1 generation
    cond: torch.Tensor                  # (B, T) bool: condition tokens (sequence-level routing)
    images: torch.Tensor | None = None  # (B', 3, 64, 64) for rows image_at
    image_at: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    labels: torch.Tensor | None = None  # (B', len(TYPES)) answer index per question type, for the image probe

    def to(self, device) -> "Batch":
        """The same batch with every tensor on ``device``."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if torch.is_tensor(getattr(self, f.name))})


class SequenceBuilder:
    """Turns records into token rows for :class:`~.model.UnifiedFaceModel` (the layout in its docstring)."""

    def __init__(self, tok: WordTokenizer, n_image: int = 16):
        self.tok, self.n_image = tok, n_image

    def understanding_prefix(self, task: str) -> list[int]:
        return [self.tok[task]] + [self.tok["<pad>"]] * self.n_image

    def vqa_row(self, qas: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """Multi-turn VQA: ``<ask> [img] q <answer> a <eos> ...``; loss on answers and their <eos>."""
        ids = self.understanding_prefix("<ask>")
        tgt = [-100] * len(ids)
        for q, a in qas:
            q_ids = self.tok.encode(q) + [self.tok["<answer>"]]
            a_ids = self.tok.encode(a) + [self.tok["<eos>"]]
            ids += q_ids + a_ids
            tgt += [-100] * len(q_ids) + a_ids
        return ids, tgt

    def caption_row(self, text: str) -> tuple[list[int], list[int]]:
        ids = self.understanding_prefix("<describe>")
        words = self.tok.encode(text) + [self.tok["<eos>"]]
        return ids + words, [-100] * len(ids) + words

    def draw_row(self, text: str, codes) -> tuple[list[int], list[int]]:
        ids = [self.tok["<draw>"]] + self.tok.encode(text) + [self.tok["<answer>"]]
        c = [self.tok.code_offset + int(k) for k in codes]
        return ids + c, [-100] * len(ids) + c

    def collate(self, rows: list[tuple[list[int], list[int]]], groups: list[int], images: torch.Tensor | None,
                image_rows: list[int], shift: bool = True) -> Batch:
        """Right-padded rows; ``targets`` shifted so position t predicts token t+1."""
        t = max(len(r[0]) for r in rows)
        tokens = torch.zeros(len(rows), t, dtype=torch.long)
        targets = torch.full((len(rows), t), -100, dtype=torch.long)
        cond = torch.zeros(len(rows), t, dtype=torch.bool)
        for i, ((ids, tgt), g) in enumerate(zip(rows, groups)):
            tokens[i, :len(ids)] = torch.tensor(ids)
            tt = torch.tensor(tgt)
            if shift:
                targets[i, :len(ids) - 1] = tt[1:]
            else:
                targets[i, :len(ids)] = tt
            if g == 1:  # generation: condition = the caption words
                end = ids.index(self.tok["<answer>"])
                cond[i, 1:end] = True
            else:
                cond[i, 1:1 + self.n_image] = True
        return Batch(tokens, targets, torch.tensor(groups, dtype=torch.long), cond, images,
                     torch.tensor(image_rows, dtype=torch.long))


# ----------------------------------------------------------------------------------------- generation codebook


def patches(images: np.ndarray, grid: int = 4) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float (N, grid*grid, p*p*3) in [0, 1]."""
    n, s = images.shape[0], images.shape[1]
    p = s // grid
    x = images.reshape(n, grid, p, grid, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, grid * grid, p * p * 3)
    return x.astype(np.float32) / 255.0


def kmeans_codebook(images: np.ndarray, n_codes: int, grid: int = 4, seed: int = 0, iters: int = 12,
                    max_patches: int = 20000) -> np.ndarray:
    """A patch codebook (k-means over 16x16 patches): the generation side's image tokenizer."""
    rng = np.random.default_rng([seed, 5])
    x = patches(images, grid).reshape(-1, images.shape[1] * images.shape[2] * 3 // (grid * grid))
    x = x[rng.choice(len(x), size=min(max_patches, len(x)), replace=False)]
    c = x[rng.choice(len(x), size=n_codes, replace=False)].copy()
    xt = torch.from_numpy(x)
    for _ in range(iters):
        ct = torch.from_numpy(c)
        assign = torch.cdist(xt, ct).argmin(1).numpy()
        for k in range(n_codes):
            members = x[assign == k]
            c[k] = members.mean(0) if len(members) else x[rng.integers(len(x))]
    return c


def encode_codes(images: np.ndarray, codebook: np.ndarray | torch.Tensor, grid: int = 4) -> np.ndarray:
    cb = torch.as_tensor(codebook, dtype=torch.float32)
    x = torch.from_numpy(patches(images, grid))
    return torch.cdist(x.reshape(-1, x.shape[-1]), cb).argmin(1).reshape(len(images), -1).numpy()


def decode_codes(codes, codebook, grid: int = 4, size: int = 64) -> np.ndarray:
    cb = torch.as_tensor(codebook, dtype=torch.float32).numpy()
    codes = np.asarray(codes)
    p = size // grid
    x = cb[codes].reshape(len(codes), grid, grid, p, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(len(codes), size,
                                                                                                 size, 3)
    return (x * 255.0).round().clip(0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- a user's folder


@dataclass
class FaceRecord:
    path: Path
    caption: str = ""
    qa: list = field(default_factory=list)  # [{"question": str, "answer": str}]


def read_face_folder(folder: str | os.PathLike, jsonl: str | os.PathLike | None = None) -> list[FaceRecord]:
    """A user's folder of real images with a JSONL (default ``metadata.jsonl`` in the folder), one object a line:
    ``{"file_name": "a.jpg", "caption": "...", "qa": [{"question": "...", "answer": "..."}]}``; ``text`` is read
    as the caption, and a line may hold one pair as top-level ``question`` / ``answer``. Every error names the
    file and line."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"face dataset folder {root} does not exist")
    meta = Path(jsonl) if jsonl else root / "metadata.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: no JSONL of captions/questions/answers (one JSON object per line with "
                                f"'file_name' and 'caption' and/or 'qa')")
    records: dict[str, FaceRecord] = {}
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{meta}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        name = row.get("file_name") or row.get("file") or row.get("image")
        if not name or not isinstance(name, str):
            raise ValueError(f"{where}: missing 'file_name'")
        path = (root / name).resolve()
        if root.resolve() not in path.parents:
            raise ValueError(f"{where}: file_name {name!r} points outside {root}")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{where}: {name!r} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image {name!r} not found in {root}")
        qa = row.get("qa", [])
        if "question" in row or "answer" in row:
            qa = list(qa) + [{"question": row.get("question"), "answer": row.get("answer")}]
        if not isinstance(qa, list):
            raise ValueError(f"{where}: 'qa' must be a list of {{'question', 'answer'}} objects")
        for k, pair in enumerate(qa):
            if not isinstance(pair, dict) or not isinstance(pair.get("question"), str) \
                    or not isinstance(pair.get("answer"), str) or not pair["question"].strip() \
                    or not pair["answer"].strip():
                raise ValueError(f"{where}: qa[{k}] needs a non-empty 'question' and 'answer' (strings)")
        cap = row.get("caption", row.get("text", ""))
        if not isinstance(cap, str):
            raise ValueError(f"{where}: 'caption' must be a string")
        if not cap and not qa:
            raise ValueError(f"{where}: neither a caption nor question/answer pairs for {name!r}")
        rec = records.setdefault(str(path), FaceRecord(path))
        rec.caption = cap or rec.caption
        rec.qa.extend({"question": p["question"], "answer": p["answer"]} for p in qa)
    if not records:
        raise ValueError(f"{meta}: no records")
    return list(records.values())


def load_record_images(records: list[FaceRecord], size: int = 64) -> np.ndarray:
    from ..synthface.dataset import load_images

    return load_images([{"path": r.path} for r in records], size)


def random_qas(rng: np.random.Generator, attrs: dict, facts: dict, turns: int,
               types: list[str] | None = None) -> list[tuple[str, str]]:
    """``turns`` different question types (of ``types``, default all) in random phrasings with their answers."""
    types = list(types or TYPES)
    out = []
    for j in rng.choice(len(types), size=min(turns, len(types)), replace=False):
        t = types[int(j)]
        q = PHRASINGS[t][int(rng.integers(len(PHRASINGS[t])))]
        out.append((q, answer_word(t, truth(t, attrs, facts))))
    return out
