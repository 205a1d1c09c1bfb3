"""The committed SynthFace judges (no training here): held-out accuracy, insightface compatibility, face
detection, metrics and the Judge Faces node."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def judges(facesmith):
    from facesmith.core.judges import metrics

    return metrics.attribute_judge(), metrics.recognizer()


@pytest.fixture(scope="module")
def heldout_images(facesmith):
    from facesmith.core.judges import data

    return data.eval_images("heldout", 200, seed=4242)


def test_weight_files_name_their_kind_and_provenance(judges):
    """The files say what they are and how they were made. Their accuracy is not read from the stored ``held_out``
    figures here: the tests below re-measure it on fresh held-out renders."""
    from facesmith.core.formats import read_safetensors_metadata
    from facesmith.core.judges.common import BUILTIN_JUDGES_DIR

    _, rec = judges
    for name in ("attributes", "recognizer", "detector"):
        meta = read_safetensors_metadata(BUILTIN_JUDGES_DIR / f"{name}.safetensors")
        assert meta["facesmith_kind"] == f"facesmith.judge.{name}"
        assert "held_out" in meta and "seed" in meta and "arch" in meta and "steps" in meta
    assert 0.0 < rec.threshold < 1.0


def test_attribute_judge_on_fresh_heldout_renders(judges, heldout_images):
    from facesmith.core.judges import data

    attr, _ = judges
    res = data.attribute_accuracy(attr, heldout_images)
    for name in data.ATTRIBUTE_HEADS:
        assert res["per_head"][name] >= 0.95, (name, res["per_head"])
    assert res["per_head"]["skin_tone"] >= 0.8  # identity facts are reported too; the clearest one must be read
    # a ComfyUI IMAGE gives the same answers as uint8 arrays, and larger images are resized
    comfy = torch.from_numpy(heldout_images.images[:8]).float() / 255.0
    assert attr.predict(comfy) == attr.predict(heldout_images.images[:8])
    big = torch.nn.functional.interpolate(comfy.permute(0, 3, 1, 2), size=128, mode="bilinear").permute(0, 2, 3, 1)
    agree = np.mean([a["hair"] == b["hair"] and a["background"] == b["background"]
                     for a, b in zip(attr.predict(big), attr.predict(comfy))])
    assert agree >= 0.85
    probs = attr.probabilities(heldout_images.images[:2])
    assert abs(sum(probs[0]["hair"].values()) - 1.0) < 1e-4 and set(probs[0]["glasses"]) == {False, True}


def test_recognizer_verification_on_heldout_pairs(judges):
    from facesmith.core.judges import data

    _, rec = judges
    res = data.verification(rec, "heldout", 200, seed=4243)
    assert res["accuracy"] >= 0.95, res
    e = rec.embed(np.zeros((2, 64, 64, 3), np.uint8))
    assert e.shape == (2, 128) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-4)


def test_metrics_same_identity_high_different_low(facesmith):
    from facesmith.core.judges import metrics
    from facesmith.core.synthface.render import random_attributes, render

    rng = np.random.default_rng(3)
    ref = render(18, {"hair": "brown"}, 64, None)
    same = np.stack([render(18, random_attributes(rng), 64, v) for v in range(6)])
    others = np.stack([render(18 + 20 * k, random_attributes(rng), 64, k) for k in range(1, 7)])
    s_same, s_other = metrics.identity_similarity(same, ref), metrics.identity_similarity(others, ref)
    assert s_same.shape == (6,) and s_same.min() > s_other.max()
    assert metrics.verification_rate(same, ref) >= 5 / 6 and metrics.verification_rate(others, ref) <= 1 / 6
    emb = metrics.embed(ref[None])
    assert np.allclose(metrics.identity_similarity(same, emb[0]), s_same, atol=1e-5)
    assert metrics.diversity(others) > metrics.diversity(same) + 0.3
    asked = [{"hair": "red", "glasses": True}, {"hair": "blue"}]
    imgs = np.stack([render(38, {"hair": "red", "glasses": True}, 64, 1), render(38, {"hair": "black"}, 64, 2)])
    adh = metrics.attribute_adherence(imgs, asked)
    assert adh["n"] == 2 and adh["checks"] == 3 and adh["mean"] == pytest.approx(2 / 3)
    assert adh["per_attribute"] == {"hair": 0.5, "glasses": 1.0}
    with pytest.raises(ValueError, match="unknown attribute"):
        metrics.attribute_adherence(imgs[:1], [{"wings": True}])
    report = metrics.judge_report()
    assert {"attributes", "recognizer", "threshold"} <= set(report)  # the stored figures, reported, not judged here
    assert report["threshold"] == metrics.recognizer().threshold


def test_remeasure_judges_quickly(facesmith):
    from facesmith.core.judges import metrics

    res = metrics.remeasure_judges(n_images=60, n_pairs=60, seed=99)
    assert set(res["per_attribute"]) == {"hair", "expression", "glasses", "hat", "beard", "background"}
    assert res["attribute_accuracy"] >= 0.9 and res["verification_accuracy"] >= 0.85


def test_detector_finds_synthface_faces_and_rejects_blank(facesmith, heldout_images):
    from facesmith.core import faces

    errs = []
    for img, lm in zip(heldout_images.images[:20], heldout_images.landmarks[:20]):
        found = faces.detect(img, backend="synthface")
        assert found, "no face found in a SynthFace render"
        box, kps, score = found[0]
        assert score > 0.5 and box[0] < lm[:, 0].min() and box[2] > lm[:, 0].max()
        errs.append(np.abs(kps - lm).mean())
    assert np.mean(errs) < 1.5  # pixels at 64x64
    crop = faces.detect_and_crop(heldout_images.images[0], backend="synthface")
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    with pytest.raises(faces.NoFaceError, match="no face detected in"):
        faces.detect_and_crop(np.full((64, 64, 3), 128, np.uint8), backend="synthface")
    with pytest.raises(faces.NoFaceError):
        faces.detect_and_crop(np.zeros((96, 80, 3), np.uint8), backend="synthface")
    centre = faces.detect_and_crop(heldout_images.images[0], backend="center")
    assert centre.shape == (112, 112, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        faces.detect_and_crop(heldout_images.images[0], backend="magic")


def test_detected_crops_embed_like_canonical_ones(judges, heldout_images):
    from facesmith.core import faces

    _, rec = judges
    imgs = heldout_images.images[:12]
    crops = np.stack([faces.detect_and_crop(i, backend="synthface") for i in imgs])
    cos = (rec.embed(crops, aligned=True) * rec.embed(imgs)).sum(1)
    assert float(cos.mean()) > 0.8 and float(cos.min()) > rec.threshold


def test_onnx_recognizer_matches_torch_in_insightface(judges, heldout_images):
    pytest.importorskip("insightface")
    from insightface.model_zoo import get_model

    from facesmith.core.judges.align import align_batch, to_batch
    from facesmith.core.judges.common import BUILTIN_INSIGHTFACE_ROOT

    _, rec = judges
    model = get_model(str(BUILTIN_INSIGHTFACE_ROOT / "models" / "synthface" / "rec_synthface.onnx"),
                      providers=["CPUExecutionProvider"])
    assert type(model).__name__ == "ArcFaceONNX" and model.input_size == (112, 112)
    crops = (align_batch(to_batch(heldout_images.images[:8]), heldout_images.landmarks[:8]) * 255).round()
    crops = crops.permute(0, 2, 3, 1).numpy().astype(np.uint8)
    feats = np.asarray(model.get_feat([c[..., ::-1].copy() for c in crops]))  # insightface feeds BGR
    ref = rec.embed(crops, aligned=True).numpy()
    cos = (feats * ref).sum(1) / np.linalg.norm(feats, axis=1)
    assert cos.min() > 0.99


def test_insightface_face_analysis_end_to_end(judges, heldout_images):
    pytest.importorskip("insightface")
    from facesmith.core import faces

    _, rec = judges
    app = faces.face_analysis("synthface")
    assert {"detection", "recognition"} <= set(app.models)
    img = heldout_images.images[1]
    found = app.get(np.ascontiguousarray(img[..., ::-1]))
    assert len(found) == 1
    f = found[0]
    assert np.abs(f.kps - heldout_images.landmarks[1]).mean() < 1.5
    cos = float(f.normed_embedding @ rec.embed(img[None])[0].numpy())
    assert cos > rec.threshold
    crop = faces.detect_and_crop(img, backend="insightface")
    assert crop.shape == (112, 112, 3)
    with pytest.raises(faces.NoFaceError):
        faces.detect_and_crop(np.full((64, 64, 3), 200, np.uint8), backend="insightface")


def test_judge_faces_node(facesmith):
    from facesmith.core.images import numpy_to_comfy
    from facesmith.core.synthface.render import render

    from facesmith.nodes import judge_nodes as mod

    node = mod.NODE_CLASS_MAPPINGS["FaceSmithJudgeFaces"]()
    imgs = numpy_to_comfy(np.stack([render(38, {"hair": "red", "glasses": True}, 64, v) for v in (1, 2)]))
    ref = numpy_to_comfy(render(38, {}, 64, None))
    out = node.run(imgs, reference=ref, prompt="a photo of a person with red hair, wearing glasses")
    report, sim = out["result"]
    assert out["ui"]["text"] == [report]
    assert "prompt adherence 1.000" in report and "same person" in report and sim > 0.5
    out2 = node.run(imgs)
    assert out2["result"][1] == 0.0 and "no reference" in out2["result"][0]
    with pytest.raises(ValueError, match="Judge Faces \\(FaceSmith\\): input 'images'"):
        node.run(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
