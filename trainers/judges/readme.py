"""The judges' README.md, rendered from the build summary or read back from the judge files' metadata."""
from __future__ import annotations

import json
from pathlib import Path

from ...core.judges import data as jdata


def summary_from_files(out_dir) -> dict:
    """The build summary (what README.md shows) read back from the metadata of the judge files in ``out_dir``."""
    from ...core.judges.common import load_net

    out_dir = Path(out_dir)
    _, _, am = load_net(out_dir / "attributes.safetensors", "facesmith.judge.attributes")
    _, _, rm = load_net(out_dir / "recognizer.safetensors", "facesmith.judge.recognizer")
    _, _, dm = load_net(out_dir / "detector.safetensors", "facesmith.judge.detector")
    return {"attributes": am["held_out"], "recognizer": rm["held_out"], "threshold": rm["threshold"],
            "detector": dm["held_out"], "insightface": rm.get("insightface"), "timings": rm["timings"],
            "settings": rm["settings"], "seed": rm["seed"], "command": rm.get("command", "")}


def write_readme(out_dir, overwrite: bool = True) -> Path:
    """Regenerate ``out_dir/README.md`` from the judge files' metadata (no training)."""
    from ...core.formats import atomic_write_text

    summary = summary_from_files(out_dir)
    return atomic_write_text(Path(out_dir) / "README.md", readme(summary, summary["command"]), overwrite=overwrite)


def readme(summary: dict, command: str) -> str:
    a, r, d = summary["attributes"], summary["recognizer"], summary["detector"]
    ins = summary.get("insightface") or {}
    t = summary["timings"]
    def table(accs: dict) -> str:
        return "\n".join(f"| {k} | {v * 100:.2f}% | {100 / len(jdata.HEADS[k]):.0f}% |" for k, v in accs.items())

    rows, facts = table(a["per_attribute"]), table(a["per_fact"])
    ver = r["verification"]
    lines = [
        "# SynthFace judges",
        "",
        "Built-in evaluation models used by every FaceSmith benchmark. Trained ONLY on TRAIN identities "
        "(`identity % 20 < 16`); the recognizer's threshold is chosen on VAL identities; every figure below is "
        "measured on HELD-OUT identities (`identity % 20 >= 18`) with the shipped (fp16-stored) weights.",
        "",
        "## Reproduce",
        "",
        "```",
        command or "facesmith train judges --seed 0",
        "```",
        "",
        f"Seed {summary['seed']}; settings: `{json.dumps(summary['settings'], sort_keys=True)}`. "
        f"Building took {t['total_train_s'] / 60:.1f} min on one CPU core (torch 1 thread), rendering, "
        f"training and measuring: pool "
        f"{t['render_pool_s']:.0f} s{' (loaded from the cache in --work-dir)' if t.get('pool_from_cache') else ''}, "
        f"attribute judge {t['attributes_train_s']:.0f} s, recognizer "
        f"{t['recognizer_train_s']:.0f} s, detector {t['detector_train_s']:.0f} s.",
        "",
        "## Files",
        "",
        "- `attributes.safetensors`: attribute judge (ResNet + BatchNorm, 64x64 input, one head per attribute and "
        "identity fact) -- `core.judges.attributes.AttributeJudge`;",
        "- `recognizer.safetensors`: identity recognizer (ResNet + BatchNorm, 112x112 arcface-aligned input, "
        "128-d L2-normalised embedding, CosFace margin loss + trait regression; `threshold` in the metadata) -- "
        "`core.judges.recognizer.IdentityRecognizer`;",
        "- `detector.safetensors`: face detector (box + 5 landmarks, SCRFD layout, 128x128 input) -- "
        "`core.judges.detector.FaceDetector`;",
        "- `../../insightface/models/synthface/{det,rec}_synthface.onnx`: the detector and recognizer for "
        "insightface (`FaceAnalysis(name=\"synthface\", root=<models>/insightface)`).",
        "",
        f"## Attribute judge (held-out, {a['n_images']} fresh renders)",
        "",
        "| attribute | accuracy | chance |",
        "|---|---|---|",
        rows,
        f"| **mean** | **{a['attribute_mean'] * 100:.2f}%** | |",
        "",
        "| identity fact | accuracy | chance |",
        "|---|---|---|",
        facts,
        f"| **mean** | **{a['fact_mean'] * 100:.2f}%** | |",
        "",
        "Identity facts are harder by nature: a hat hides most of the hair style, narrow or smiling eyes leave a few "
        "pixels of iris, and the nose is a low-contrast shape a few pixels wide at 64x64.",
        "",
        f"## Identity recognizer (held-out, {ver['n_pairs']} pairs)",
        "",
        "Protocol: half the pairs show the SAME identity with different attribute combinations and views, half show "
        "two DIFFERENT identities with the SAME attributes and different views.",
        "",
        f"- verification accuracy: **{ver['accuracy'] * 100:.2f}%** at threshold {summary['threshold']:.4f} "
        f"(chosen on VAL: {r['val_verification']['accuracy'] * 100:.2f}%)",
        f"- true accept {ver['true_accept'] * 100:.2f}%, true reject {ver['true_reject'] * 100:.2f}%; mean cosine same "
        f"{ver['same_mean']:.3f}, different {ver['different_mean']:.3f}",
        "",
        f"## Detector (held-out, {d['n']} renders)",
        "",
        f"- face found (box IoU > 0.5): {d['found_rate'] * 100:.2f}%; with landmark error < 10% of the eye-mouth "
        f"distance: {d['detection_rate'] * 100:.2f}%",
        f"- mean landmark error {d['mean_nme'] * 100:.2f}% of the eye-mouth distance; mean box IoU {d['mean_iou']:.3f}",
        f"- faces reported on a blank gray image: {d['faces_on_blank_gray']}",
        "",
    ]
    lines += [
        "## Use",
        "",
        "```python",
        "from facesmith.core.judges.metrics import identity_similarity, verification_rate, attribute_adherence, "
        "diversity",
        "from facesmith.core.judges.attributes import AttributeJudge",
        "from facesmith.core.judges.recognizer import IdentityRecognizer",
        "AttributeJudge.load().predict(images)            # uint8 (N, H, W, 3) or ComfyUI IMAGE",
        "IdentityRecognizer.load().embed(images)          # (N, 128); .threshold = same person",
        "from facesmith.core.faces import detect_and_crop  # backends insightface / synthface / center",
        "```",
        "",
        "`embed(images)` aligns a face it has no landmarks for with the canonical SynthFace landmarks (the mean over "
        "upright, centred faces); `embed(images, landmarks=kps)` uses detected ones (insightface's `norm_crop`); "
        "`embed(crops, aligned=True)` takes already aligned 112x112 crops. The recognizer was trained on both kinds.",
        "",
        "The render pool is cached in `--work-dir` (default `.cache/train-judges`); an interrupted run resumes from "
        "its checkpoints, a finished judge's checkpoints are removed (so the same command reproduces the weights).",
        "",
    ]
    if ins:
        lines += [
            "## insightface",
            "",
            f"- `get_model(rec_synthface.onnx)` -> `{ins['routed_as']}` (input mean {ins['input_mean']}, std "
            f"{ins['input_std']}); `get_feat` on BGR aligned crops vs torch: min cosine {ins['min_cosine']:.6f}",
            f"- `FaceAnalysis` (detect -> norm_crop -> embed) on {ins['face_analysis_pairs']} VAL pairs: faces found "
            f"in "
            f"both images of {ins['face_analysis_found_both']} pairs, verification accuracy "
            f"{ins['face_analysis_verification_accuracy'] * 100:.2f}%, mean cosine to the canonical-alignment torch "
            f"embedding {ins['face_analysis_vs_canonical_cosine']:.3f}",
            "",
        ]
    return "\n".join(lines)
