"""``facesmith bench faces``: registered beside the other benchmarks; its scoring says "same face above every
different pair" only when that holds; the committed result JSON has the harness's shape and the measured claims."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "assets" / "models" / "facesmith" / "faces" / "bench_faces.json"


def test_registered_with_the_harness(facesmith):
    from facesmith.core.bench import harness

    assert "faces" in harness.BENCHMARKS
    with pytest.raises(ValueError, match="unknown benchmark"):
        harness.run_benchmark("nope")


def test_scores_compare_each_variant_with_the_other_people(facesmith):
    from facesmith.core.bench.faces import _scores

    eye = torch.eye(4)  # 3 people of a group photo + 1 other person, orthogonal embeddings
    good = {"flip": [eye[0], eye[1], eye[2], eye[3]], "dark": [eye[0] * 0.8 + eye[1] * 0.6, None, eye[2], eye[3]]}
    res = _scores(eye, list(good), good, 3)
    assert res["same_face_always_above_every_different_pair"] and res["different_people_max"] == 0.0
    assert res["per_variant"]["dark"] == {"mean": pytest.approx((0.8 + 1 + 1) / 3), "min": pytest.approx(0.8),
                                          "faces_found": 3}
    bad = {"flip": [eye[1], eye[1], eye[2], eye[3]]}  # person 0's variant looks like person 1
    res = _scores(eye, list(bad), bad, 3)
    assert not res["same_face_always_above_every_different_pair"]
    assert res["share_of_variants_scoring_above_that_persons_best_other_match"] == 0.75


def test_variants_keep_one_face_and_change_it(facesmith):
    from facesmith.core.bench.faces import VARIANTS, _variants

    img = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    v = _variants(img, [100, 50, 140, 100])
    assert list(v) == list(VARIANTS)
    assert v["head_crop"].shape[0] == v["head_crop"].shape[1] == 110  # 2.2 x the 50 px box side
    assert v["zoom_2x"].shape[:2] == (220, 220) and (v["hflip"] == v["head_crop"][:, ::-1]).all()
    assert v["darker"].mean() < v["head_crop"].mean() < v["brighter"].mean()


def test_committed_result_has_the_harness_shape_and_the_claims(facesmith):
    data = json.loads(RESULT.read_text())
    assert data["benchmark"] == "faces" and set(data["machine"]) >= {"cpu", "cpu_count", "torch", "cuda"}
    m = data["metrics"]
    assert m["lfw_crops_per_class"] == 100 and "synthface" in m["detection"]
    for det in m["detection"].values():
        assert 0.0 <= det["lfw_face_detection_rate"] <= 1.0 and det["t1_people"] == 6
    real = m["recognition_real"]
    assert real["same_face_always_above_every_different_pair"] is True
    assert real["same_face_min"] > real["different_people_max"]
    assert m["recognition_synthface_on_real"]["same_face_always_above_every_different_pair"] is False
    assert (RESULT.parent / "README.md").read_text().count("facesmith bench faces") >= 1
