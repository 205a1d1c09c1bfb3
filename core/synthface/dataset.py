"""SynthFace samples and dataset folders.

A dataset folder is ``images/*.png`` plus ``metadata.jsonl`` with one JSON object per image using the Hugging Face
imagefolder keys (``file_name``, ``text``) plus SynthFace labels. Trainers read real user datasets through the same
:func:`read_dataset_folder` (which also accepts kohya-style ``image.png`` + ``image.txt`` caption pairs).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..formats import OverwriteRefused, atomic_path, ensure_folder
from ..images import pil_to_numpy
from ..locks import folder_lock
from ..progress import Progress, report
from .captions import caption, random_mention
from .render import ATTRIBUTES, random_attributes, render
from .splits import SPLITS, identities, is_heldout_combo
from .vqa import vqa_pairs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class Sample:
    image: np.ndarray  # uint8 HxWx3
    caption: str
    identity: int
    attributes: dict
    view: int


def sample(rng: np.random.Generator, ids: list[int], size: int = 64, mention_p: float = 1.0,
           exclude_heldout_combos: bool = True, subject: str = "a person") -> Sample:
    """One random rendered sample from identities ``ids`` with a caption naming some attributes."""
    identity = int(ids[int(rng.integers(len(ids)))])
    while True:
        attrs = random_attributes(rng)
        if not (exclude_heldout_combos and is_heldout_combo(attrs)):
            break
    view = int(rng.integers(1 << 30))
    mention = list(ATTRIBUTES) if mention_p >= 1.0 else random_mention(rng, mention_p)
    return Sample(render(identity, attrs, size, view=view), caption(attrs, subject, mention), identity, attrs, view)


def _render_job(job) -> np.ndarray:
    identity, attrs, size, view = job
    return render(identity, attrs, size, view=view)


def render_many(jobs: list[tuple[int, dict, int | None]], size: int = 64, workers: int = 0) -> np.ndarray:
    """Render ``(identity, attributes, view)`` jobs as uint8 ``(N, size, size, 3)``, in ``workers`` processes
    (0 = one per CPU core; the result does not depend on the number of workers)."""
    workers = workers or os.cpu_count() or 1
    full = [(int(i), a, size, v) for i, a, v in jobs]
    out = np.zeros((len(full), size, size, 3), np.uint8)
    if workers <= 1 or len(full) < 256:
        for k, job in enumerate(full):
            out[k] = _render_job(job)
        return out
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        for k, img in enumerate(pool.imap(_render_job, full, chunksize=64)):
            out[k] = img
    return out


def export(out_dir: str | os.PathLike, count: int, split: str = "train", size: int = 64, seed: int = 0,
           mention_p: float = 1.0, progress: Progress | None = None, overwrite: bool = False) -> Path:
    """Write ``count`` samples of ``split`` identities as a dataset folder.

    Never replaces a file it did not create in this call: every target (``images/NNNNNN.png`` and
    ``metadata.jsonl``) is checked before anything is written, the first clash is named, and each file is published
    without replacing one that appeared meanwhile, unless ``overwrite``. The folder is locked while writing, so two
    exports into one folder cannot interleave.
    """
    if split not in SPLITS:
        raise ValueError(f"synthface export: --split must be one of {SPLITS}, got {split!r}")
    if count < 1:
        raise ValueError(f"synthface export: --count must be >= 1, got {count}")
    out = ensure_folder(out_dir, "synthface export folder")
    meta_path = out / "metadata.jsonl"
    names = [f"images/{i:06d}.png" for i in range(count)]
    with folder_lock(out, f"synthface export of {count} images"):
        if not overwrite:
            for target in [meta_path] + [out / n for n in names]:
                if os.path.lexists(target):  # the first clash; this export did not create it
                    raise OverwriteRefused(target, "synthface export: ")
        from PIL import Image

        rng = np.random.default_rng(seed)
        ids = identities(split)
        with atomic_path(meta_path, overwrite) as meta_tmp, open(meta_tmp, "w", encoding="utf-8") as meta:
            for i, name in enumerate(names):
                s = sample(rng, ids, size, mention_p, exclude_heldout_combos=(split == "train"))
                with atomic_path(out / name, overwrite) as tmp:
                    Image.fromarray(s.image).save(tmp, format="PNG")
                row = {"file_name": name, "text": s.caption, "identity": s.identity, "attributes": s.attributes,
                       "view": s.view, "split": split, "vqa": vqa_pairs(s.identity, s.attributes)}
                meta.write(json.dumps(row) + "\n")
                report(progress, i + 1, count)
    return out


def read_dataset_folder(folder: str | os.PathLike) -> list[dict]:
    """Rows ``{"path": Path, "text": str, ...labels}`` of a dataset folder (metadata.jsonl or image+.txt pairs)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    meta = root / "metadata.jsonl"
    rows = []
    if meta.exists():
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{meta}:{n}: not valid JSON ({exc.msg})") from None
            name = row.get("file_name") or row.get("file")
            if not name:
                raise ValueError(f"{meta}:{n}: missing 'file_name'")
            path = (root / name).resolve()
            if root.resolve() not in path.parents:
                raise ValueError(f"{meta}:{n}: file_name {name!r} points outside the dataset folder")
            if not path.exists():
                raise FileNotFoundError(f"{meta}:{n}: image {name!r} not found")
            rows.append(dict(row, path=path, text=row.get("text", "")))
    else:
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            txt = path.with_suffix(".txt")
            rows.append({"path": path, "file_name": str(path.relative_to(root)),
                         "text": txt.read_text(encoding="utf-8").strip() if txt.exists() else ""})
    if not rows:
        raise ValueError(f"dataset folder {root} holds no images (expected metadata.jsonl or image files)")
    return rows


def load_images(rows: list[dict], size: int) -> np.ndarray:
    """Load dataset rows as uint8 (N, size, size, 3), centre-cropped and resized."""
    from PIL import Image

    out = np.zeros((len(rows), size, size, 3), np.uint8)
    for i, row in enumerate(rows):
        with Image.open(row["path"]) as opened:
            im = Image.fromarray(pil_to_numpy(opened)[0])  # the one mode-aware conversion (16-bit, CMYK, ...)
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BICUBIC)
        out[i] = np.asarray(im)
    return out
