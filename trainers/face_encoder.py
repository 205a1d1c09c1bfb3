"""``facesmith train face-encoder``: the identity adapter's own face recognizer.

The identity adapter needs a face-recognition feature of each reference (its input) and a differentiable face
recognizer that scores the denoised prediction against the reference (its identity loss). Neither may be the
SynthFace evaluation judge (``core/judges``): a model trained against its own judge proves nothing. So this is a
separate recognizer: another architecture (narrower, deeper third stage, 96-d), another seed, another pool of TRAIN
identities, the same CosFace + trait-regression recipe (``trainers/judges/objectives.RecognizerObjective``).
Its threshold is chosen on VALIDATION identities; held-out figures are measured and written beside it.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..core.identity.face_encoder import ARCH, KIND
from ..core.judges import data as jdata
from ..core.judges.nets import RecognizerNet
from .judges.build import _train_one
from .judges.objectives import RecognizerObjective

log = logging.getLogger("facesmith.train")

DEFAULTS = {"pool_identities": 4000, "per_identity": 4, "steps": 900, "lr": 2e-3, "batch_size": 128,
            "eval_pairs": 1000}
EVAL_SEED = 4242


def build_face_encoder(out_path, work_dir=None, seed: int = 11, overwrite: bool = False, progress_factory=None,
                       command: str = "", **overrides) -> dict:
    """Train the adapter face encoder on TRAIN identities and write it to ``out_path``; returns its figures."""
    from ..core.formats import check_new_file
    from ..core.judges.common import round_trip_half, save_net
    from ..core.judges.recognizer import IdentityRecognizer

    cfg = dict(DEFAULTS)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise TypeError(f"build_face_encoder: unknown settings {sorted(unknown)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    out_path = Path(out_path)
    check_new_file(out_path, overwrite)
    pf = progress_factory or (lambda label: None)
    torch.manual_seed(seed)
    t0 = time.time()
    pool = jdata.training_pool(cfg["pool_identities"], cfg["per_identity"], seed=seed + 1000,
                               progress=pf("render pool"))
    render_s = time.time() - t0
    net = RecognizerNet(ARCH["dim"], tuple(ARCH["widths"]), tuple(ARCH["blocks"]), input_size=ARCH["input_size"])
    t1 = time.time()
    wd = Path(work_dir) / f"face-encoder-seed{seed}" if work_dir else None
    _train_one(RecognizerObjective(net, pool, cfg["batch_size"], seed), cfg["steps"], cfg["lr"], seed, wd,
               pf("train face encoder"), recipe=dict(cfg, arch=ARCH, what="face_encoder"))
    train_s = time.time() - t1
    round_trip_half(net)
    rec = IdentityRecognizer(net, 0.0)
    va, vb, vsame = jdata.eval_pairs("val", cfg["eval_pairs"], EVAL_SEED)
    rec.threshold = jdata.best_threshold(jdata.pair_similarities(rec, va, vb), vsame)
    ver = jdata.verification(rec, "heldout", cfg["eval_pairs"], EVAL_SEED + 1)
    log.info("face encoder: threshold %.4f, held-out verification %.4f", rec.threshold, ver["accuracy"])
    meta = {"seed": seed, "settings": cfg, "steps": cfg["steps"], "threshold": rec.threshold, "command": command,
            "timings": {"render_pool_s": round(render_s, 1), "train_s": round(train_s, 1)},
            "pool": {"identities": cfg["pool_identities"], "per_identity": cfg["per_identity"], "split": "train",
                     "pool_seed": seed + 1000},
            "held_out": {"verification_accuracy": ver["accuracy"], "verification": ver},
            "loss": "CosFace s=32 m=0.3 + trait regression",
            "note": "the identity adapter's own recognizer; NOT the SynthFace evaluation judge"}
    save_net(out_path, net, KIND, ARCH, meta, overwrite)
    return json.loads(json.dumps(meta))
