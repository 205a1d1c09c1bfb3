"""insightface compatibility check of the exported ONNX pack."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("facesmith.train")


def insightface_check(onnx_dir, rec, va, vb, vsame, ver_pairs: int = 300) -> dict | None:
    """insightface loads the pack: recognizer routed to ArcFaceONNX with matching embeddings, and FaceAnalysis
    (detect -> norm_crop -> embed) verification accuracy on validation pairs at the recognizer's threshold."""
    try:
        import insightface  # noqa: F401
    except Exception as exc:  # pragma: no cover - optional dependency
        log.warning("insightface not importable (%s): ONNX files written but not checked", exc)
        return None
    from ...core.judges import export as jexport
    from ...core.judges.align import align_batch, to_batch

    crops = (align_batch(to_batch(va.images[:64]), va.landmarks[:64]).permute(0, 2, 3, 1).numpy() * 255)
    crops = crops.round().astype(np.uint8)
    out = jexport.check_with_insightface(onnx_dir, rec.net, crops)
    from insightface.app import FaceAnalysis

    d = Path(onnx_dir)
    app = FaceAnalysis(name=d.name, root=str(d.parent.parent), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    sims, found, torch_cos = [], 0, []
    emb_torch_a = rec.embed(va.images[:ver_pairs]).numpy()
    for i in range(ver_pairs):
        fa = app.get(np.ascontiguousarray(va.images[i][..., ::-1]))
        fb = app.get(np.ascontiguousarray(vb.images[i][..., ::-1]))
        if not fa or not fb:
            sims.append(-1.0)
            continue
        found += 1
        ea, eb = fa[0].normed_embedding, fb[0].normed_embedding
        sims.append(float(ea @ eb))
        torch_cos.append(float(ea @ emb_torch_a[i]))
    sims = np.array(sims)
    same = vsame[:ver_pairs]
    out.update({"face_analysis_pairs": ver_pairs, "face_analysis_found_both": found,
                "face_analysis_verification_accuracy": float(np.mean((sims > rec.threshold) == same)),
                "face_analysis_vs_canonical_cosine": float(np.mean(torch_cos)) if torch_cos else None,
                "split": "val"})
    return out
