"""``build_judges``: train the three judges, measure them on held-out identities and write them (safetensors + ONNX
for insightface)."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ...core.judges import data as jdata
from ...core.judges.nets import AttributeNet, DetectorNet, RecognizerNet
from ...core.training.loop import TrainConfig, train
from .checks import insightface_check
from .objectives import AttributeObjective, DetectorObjective, RecognizerObjective
from .readme import readme

log = logging.getLogger("facesmith.train")


ATTR_ARCH = {"widths": [24, 48, 96, 192], "blocks": [1, 1, 1, 1]}
REC_ARCH = {"dim": 128, "widths": [24, 48, 96, 192], "blocks": [1, 1, 1, 1], "input_size": 112}
DET_ARCH = {"widths": [16, 24, 32, 64, 96], "head_width": 32, "input_size": 128}


# ------------------------------------------------------------------------------------------------------ utilities


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches) -> None:
    """Recompute BatchNorm running statistics for the final (EMA) weights from a few training batches."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was = net.training
    net.train()
    for x in batches:
        net(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    net.train(was)
    net.eval()


# ------------------------------------------------------------------------------------------------------- building

DEFAULTS = {"pool_identities": 8000, "per_identity": 4, "attr_steps": 800, "rec_steps": 1500, "det_steps": 2000,
            "attr_lr": 2e-3, "rec_lr": 2e-3, "det_lr": 3e-3, "eval_images": 2000, "eval_pairs": 2000,
            "det_eval_images": 500}
EVAL_SEED = 777  # build-time evaluation renders; benchmarks re-measure with other seeds


def _train_one(objective, steps: int, lr: float, seed: int, work_dir: Path | None, progress, ema: float = 0.995,
               recipe: dict | None = None, resume: bool = True):
    """Train one judge (resumable from ``work_dir``; ``recipe``: what else shapes it, checked on resume); its
    checkpoints are removed once it has finished, so a later identical command starts from scratch and reproduces
    the same weights."""
    import shutil

    cfg = TrainConfig(steps=steps, learning_rate=lr, weight_decay=1e-4, seed=seed, ema_decay=ema, warmup_steps=50,
                      log_every=100, checkpoint_every=250, work_dir=str(work_dir) if work_dir else None,
                      recipe=recipe or {}, resume=resume)
    result = train(objective, cfg, progress)
    if work_dir is not None:
        shutil.rmtree(work_dir, ignore_errors=True)
    recalibrate_bn(next(iter(objective.modules().values())), [objective.make_batch(k)[0] for k in range(16)])
    for m in objective.modules().values():
        m.to(memory_format=torch.contiguous_format)
    return result


def build_judges(out_dir: Path, onnx_dir: Path | None, work_dir: Path | None, seed: int = 0, overwrite: bool = False,
                 progress_factory=None, command: str = "", resume: bool = True, **overrides) -> dict:
    """Train the attribute judge, the identity recognizer and the detector on TRAIN identities, measure them on
    VAL/HELD-OUT identities, and write ``attributes/recognizer/detector.safetensors`` (+ README.md) to ``out_dir``
    and the insightface ONNX pack to ``onnx_dir``. Returns the measured figures."""
    from ...core.formats import atomic_write_text, check_new_file
    from ...core.judges import export as jexport
    from ...core.judges.attributes import FILE_NAME as ATTR_FILE, KIND as ATTR_KIND, AttributeJudge
    from ...core.judges.common import round_trip_half, save_net
    from ...core.judges.detector import FILE_NAME as DET_FILE, KIND as DET_KIND, FaceDetector
    from ...core.judges.recognizer import FILE_NAME as REC_FILE, KIND as REC_KIND, IdentityRecognizer

    cfg = dict(DEFAULTS)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise TypeError(f"build_judges: unknown settings {sorted(unknown)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    out_dir = Path(out_dir)
    targets = [out_dir / ATTR_FILE, out_dir / REC_FILE, out_dir / DET_FILE, out_dir / "README.md"]
    if onnx_dir is not None:
        targets += [Path(onnx_dir) / jexport.REC_FILE, Path(onnx_dir) / jexport.DET_FILE]
    for t in targets:
        check_new_file(t, overwrite)  # fail before minutes of training
    pf = progress_factory or (lambda label: None)
    torch.manual_seed(seed)
    t_start = time.time()
    timings = {}

    # 1. the pool (cached: a rerun resumes training without re-rendering)
    t0 = time.time()
    pool_path = (Path(work_dir) / f"pool-{cfg['pool_identities']}x{cfg['per_identity']}-seed{seed}.npz"
                 if work_dir else None)
    timings["pool_from_cache"] = bool(pool_path is not None and pool_path.exists())
    if timings["pool_from_cache"]:
        pool = jdata.Pool.load(pool_path)
    else:
        pool = jdata.training_pool(cfg["pool_identities"], cfg["per_identity"], seed, progress=pf("render pool"))
        if pool_path is not None:
            pool.save(pool_path)
    timings["render_pool_s"] = round(time.time() - t0, 1)
    log.info("pool: %d renders of %d TRAIN identities (%.0f s)", len(pool), len(np.unique(pool.identity)),
             timings["render_pool_s"])
    # checkpoint folders are named after everything that shapes the weights, so other settings never resume them
    key = json.dumps([cfg, seed, ATTR_ARCH, REC_ARCH, DET_ARCH], sort_keys=True)
    key = hashlib.sha256(key.encode()).hexdigest()[:10]
    wd = (lambda name: Path(work_dir) / f"{name}-{key}") if work_dir else (lambda name: None)
    # ... and their checkpoints record it (checked on resume, should a folder be reused under other settings)
    pool_recipe = {"pool_identities": cfg["pool_identities"], "per_identity": cfg["per_identity"]}
    common_meta = {"seed": seed, "pool": {"identities": cfg["pool_identities"], "per_identity": cfg["per_identity"],
                                          "split": "train"}, "command": command}

    # 2. attribute judge
    t0 = time.time()
    heads = {k: len(v) for k, v in jdata.HEADS.items()}
    attr_net = AttributeNet(heads, tuple(ATTR_ARCH["widths"]), tuple(ATTR_ARCH["blocks"]))
    _train_one(AttributeObjective(attr_net, pool, 128, seed), cfg["attr_steps"], cfg["attr_lr"], seed, wd("attributes"),
               pf("train attribute judge"), recipe=dict(pool_recipe, judge="attributes", arch=ATTR_ARCH, batch=128),
               resume=resume)
    timings["attributes_train_s"] = round(time.time() - t0, 1)
    round_trip_half(attr_net)
    judge = AttributeJudge(attr_net, jdata.HEADS)
    attr_eval = jdata.attribute_accuracy(judge, jdata.eval_images("heldout", cfg["eval_images"], EVAL_SEED))
    log.info("attribute judge held-out: %s", json.dumps({k: round(v, 4) for k, v in attr_eval["per_head"].items()}))

    # 3. identity recognizer
    t0 = time.time()
    rec_net = RecognizerNet(REC_ARCH["dim"], tuple(REC_ARCH["widths"]), tuple(REC_ARCH["blocks"]),
                            input_size=REC_ARCH["input_size"])
    _train_one(RecognizerObjective(rec_net, pool, 128, seed), cfg["rec_steps"], cfg["rec_lr"], seed, wd("recognizer"),
               pf("train recognizer"), recipe=dict(pool_recipe, judge="recognizer", arch=REC_ARCH, batch=128),
               resume=resume)
    timings["recognizer_train_s"] = round(time.time() - t0, 1)
    round_trip_half(rec_net)
    rec = IdentityRecognizer(rec_net, 0.0)
    va, vb, vsame = jdata.eval_pairs("val", cfg["eval_pairs"], EVAL_SEED)
    threshold = jdata.best_threshold(jdata.pair_similarities(rec, va, vb), vsame)
    rec.threshold = threshold
    val_ver = jdata.verification(rec, "val", cfg["eval_pairs"], EVAL_SEED)
    ver = jdata.verification(rec, "heldout", cfg["eval_pairs"], EVAL_SEED + 1)
    log.info("recognizer: threshold %.4f (val accuracy %.4f), held-out verification %.4f", threshold,
             val_ver["accuracy"], ver["accuracy"])

    # 4. detector
    t0 = time.time()
    det_net = DetectorNet(tuple(DET_ARCH["widths"]), DET_ARCH["head_width"])
    _train_one(DetectorObjective(det_net, pool, 32, seed, kps_weight=4.0), cfg["det_steps"], cfg["det_lr"], seed,
               wd("detector"),
               pf("train detector"), recipe=dict(pool_recipe, judge="detector", arch=DET_ARCH, batch=32),
               resume=resume)
    timings["detector_train_s"] = round(time.time() - t0, 1)
    round_trip_half(det_net)
    det_eval = jdata.detection_accuracy(FaceDetector(det_net), jdata.eval_images("heldout", cfg["det_eval_images"],
                                                                                 EVAL_SEED + 2))
    blank_found = len(FaceDetector(det_net).detect(np.full((64, 64, 3), 128, np.uint8)))
    det_eval["faces_on_blank_gray"] = blank_found
    log.info("detector held-out: %s", det_eval)
    timings["total_train_s"] = round(time.time() - t_start, 1)

    # 5. insightface pack + end-to-end check
    insight = None
    if onnx_dir is not None:
        jexport.export_insightface_pack(rec_net, det_net, onnx_dir, overwrite=overwrite)
        insight = insightface_check(onnx_dir, rec, va, vb, vsame, ver_pairs=min(300, cfg["eval_pairs"]))
        log.info("insightface: %s", insight)

    # 6. write
    common_meta.update(timings=timings, settings=cfg)
    attr_meta = dict(common_meta, steps=cfg["attr_steps"], lr=cfg["attr_lr"], held_out={
        "per_attribute": {k: attr_eval["per_head"][k] for k in jdata.ATTRIBUTE_HEADS},
        "per_fact": {k: attr_eval["per_head"][k] for k in jdata.FACT_HEADS},
        "attribute_mean": attr_eval["mean"], "fact_mean": attr_eval["facts_mean"], "n_images": attr_eval["n"],
        "split": "heldout", "eval_seed": EVAL_SEED})
    save_net(out_dir / ATTR_FILE, attr_net, ATTR_KIND, dict(ATTR_ARCH, heads=jdata.HEADS, input_size=64), attr_meta,
             overwrite)
    rec_meta = dict(common_meta, steps=cfg["rec_steps"], lr=cfg["rec_lr"], threshold=threshold,
                    loss="CosFace s=32 m=0.3 + trait regression", held_out={
                        "verification_accuracy": ver["accuracy"], "verification": ver, "val_verification": val_ver,
                        "protocol": "same identity with different attributes+views vs different identities with "
                                    "the same attributes; threshold chosen on VAL identities"},
                    insightface=insight)
    save_net(out_dir / REC_FILE, rec_net, REC_KIND, REC_ARCH, rec_meta, overwrite)
    det_meta = dict(common_meta, steps=cfg["det_steps"], lr=cfg["det_lr"], threshold=0.5, held_out=det_eval)
    save_net(out_dir / DET_FILE, det_net, DET_KIND, DET_ARCH, det_meta, overwrite)
    summary = {"attributes": attr_meta["held_out"], "recognizer": rec_meta["held_out"], "threshold": threshold,
               "detector": det_eval, "insightface": insight, "timings": timings, "settings": cfg, "seed": seed}
    atomic_write_text(out_dir / "README.md", readme(summary, command), overwrite=overwrite)
    return summary
