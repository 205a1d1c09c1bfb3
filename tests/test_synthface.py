"""SynthFace renderer, landmarks and identity splits."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def sf(facesmith):
    from facesmith.core.synthface import render, splits

    return render, splits


def test_render_is_deterministic_and_identities_differ(sf):
    render, _ = sf
    attrs = {"hair": "red", "glasses": True, "background": "blue"}
    a = render.render(123, attrs, 64, view=7)
    b = render.render(123, attrs, 64, view=7)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert a.tobytes() == b.tobytes()
    c = render.render(124, attrs, 64, view=7)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 2.0
    assert render.render(123, attrs, 64, view=8).tobytes() != a.tobytes()  # another view is another pose


def test_attributes_leave_identity_intact(sf):
    render, _ = sf
    # identities with round eyes: a point on the iris shows the identity's eye colour whatever the attributes
    ids = [i for i in range(200) if render.identity_traits(i).eye_shape == "round"][:5]
    assert ids
    for i in ids:
        t = render.identity_traits(i)
        colour = np.array(render.EYE_COLOURS[t.eye_colour])
        base = None
        for attrs in ({}, {"hair": "blue", "hat": True, "beard": True, "background": "yellow"},
                      {"hair": "white", "background": "green", "beard": True}):
            img = render.render(i, attrs, 256, None)
            lm = render.landmarks(i, attrs, 256, None)
            assert base is None or np.allclose(lm, base)  # geometry does not move with the attributes
            base = lm
            S = 1024
            ew = 0.13 * t.face_w * S * t.eye_size * 1.6
            ir = min(ew * 0.8, ew) * 0.85
            x, y = lm[0] + np.array([0.7 * ir / 4, 0])
            assert np.abs(img[int(round(y)), int(round(x))].astype(int) - colour).max() <= 12, (i, attrs)
        assert render.identity_traits(i).facts() == t.facts()


def test_landmarks_follow_the_pose(sf):
    render, _ = sf
    rng = np.random.default_rng(0)
    for k in range(20):
        i = int(rng.integers(render.IDENTITY_COUNT))
        attrs = render.random_attributes(rng)
        attrs["expression"] = "neutral"
        view = None if k % 4 == 0 else int(rng.integers(1 << 30))
        img = render.render(i, attrs, 256, view)
        lm = render.landmarks(i, attrs, 256, view)
        assert lm.shape == (5, 2) and lm.dtype == np.float32
        for x, y in lm[:2]:  # the pupils are dark
            assert img[int(round(y)), int(round(x))].max() < 40
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0] and lm[1, 1] < lm[2, 1] < lm[3, 1]
    small = render.landmarks(5, {}, 64, 3)
    assert np.allclose((small + 0.5) * 4, render.landmarks(5, {}, 256, 3) + 0.5, atol=0.4)  # same place at any size


def test_splits_are_disjoint_and_complete(sf):
    render, splits = sf
    sets = {s: set(splits.identities(s)) for s in splits.SPLITS}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["heldout"])
    assert not (sets["val"] & sets["heldout"])
    assert sum(len(v) for v in sets.values()) == render.IDENTITY_COUNT
    assert len(sets["heldout"]) == render.IDENTITY_COUNT // 10
    with pytest.raises(ValueError, match="heldout"):
        splits.require_split(18, "train")


def test_judge_training_pool_uses_train_identities_only(facesmith):
    from facesmith.core.judges import data
    from facesmith.core.synthface.splits import split_of

    pool = data.training_pool(3, 2, seed=1)
    assert len(pool) == 6 and pool.images.shape == (6, 64, 64, 3)
    assert {split_of(int(i)) for i in pool.identity} == {"train"}
    assert np.all(pool.boxes[:, 2] > pool.boxes[:, 0]) and np.all(pool.boxes[:, 3] > pool.boxes[:, 1])
    inside = ((pool.landmarks[..., 0] > pool.boxes[:, None, 0]) & (pool.landmarks[..., 0] < pool.boxes[:, None, 2])
              & (pool.landmarks[..., 1] > pool.boxes[:, None, 1]) & (pool.landmarks[..., 1] < pool.boxes[:, None, 3]))
    assert inside.all()


def test_synthface_node(facesmith):
    from facesmith.nodes import synthface_nodes as mod

    node = mod.NODE_CLASS_MAPPINGS["FaceSmithSynthFace"]()
    image, text = node.run(identity=18, hair="red", expression="smiling", glasses="yes", hat="no", beard="no",
                           background="blue", size=64, view=-1)
    assert tuple(image.shape) == (1, 64, 64, 3) and image.dtype.is_floating_point
    assert "red hair" in text and "wearing glasses" in text and "smiling" in text
    from facesmith.core.synthface.render import render

    ref = render(18, {"hair": "red", "expression": "smiling", "glasses": True, "background": "blue"}, 64)
    assert np.array_equal((image[0].numpy() * 255).round().astype(np.uint8), ref)
    with pytest.raises(ValueError, match="SynthFace Render \\(FaceSmith\\): input 'identity'"):
        node.run(identity=-1, hair="red", expression="smiling", glasses="yes", hat="no", beard="no",
                 background="blue", size=64, view=-1)
    with pytest.raises(ValueError, match="input 'hair'"):
        node.run(identity=1, hair="green", expression="smiling", glasses="yes", hat="no", beard="no",
                 background="blue", size=64, view=-1)


def test_edit_triplet_target_is_the_source_with_one_attribute_changed():
    import numpy as np

    from facesmith.core.synthface.edits import edit_triplet
    from facesmith.core.synthface.splits import identities

    rng = np.random.default_rng(3)
    ids = identities("train")[:50]
    for _ in range(6):
        t = edit_triplet(rng, ids)
        lab = t["labels"]
        changed = [k for k in lab["source_attributes"] if lab["source_attributes"][k] != lab["target_attributes"][k]]
        assert changed == [lab["edited"]]
        assert "<image1>" in t["instruction"]
        assert ("<image2>" in t["instruction"]) == bool(t["references"])
        assert not np.array_equal(t["source"], t["target"])
        assert t["target"].shape == t["source"].shape == (64, 64, 3)
