"""The face pipeline (core/identity) and its nodes: SynthFace renders are found, aligned and embedded so that the
same person scores above different people; no-face, skip, retry, selection, image formats, insightface packs
(missing, partial, provider fallback); real photos with MTCNN/dlib where those wheels are installed."""
from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch

HAS_INSIGHTFACE = importlib.util.find_spec("insightface") is not None and \
    importlib.util.find_spec("onnxruntime") is not None
HAS_MTCNN = importlib.util.find_spec("facenet_pytorch") is not None
HAS_DLIB = importlib.util.find_spec("dlib") is not None and \
    importlib.util.find_spec("face_recognition_models") is not None
needs_insightface = pytest.mark.skipif(not HAS_INSIGHTFACE, reason="insightface/onnxruntime not installed "
                                       "(the 'face' extra)")
needs_mtcnn = pytest.mark.skipif(not HAS_MTCNN, reason="facenet-pytorch not installed "
                                 "(pip install --no-deps facenet-pytorch)")
needs_dlib = pytest.mark.skipif(not HAS_DLIB, reason="dlib not installed (pip install dlib-bin "
                                "face-recognition-models)")


@pytest.fixture
def models_dir(facesmith, tmp_path):
    """An empty user models folder (no user insightface pack), restored afterwards."""
    from facesmith.core import paths
    from facesmith.core.identity import face_pipeline as fp

    d = tmp_path / "models"
    d.mkdir()
    paths.set_models_dir(d)
    fp._pipeline.cache_clear()
    yield d
    paths.set_models_dir(None)
    fp._pipeline.cache_clear()


@pytest.fixture(scope="module")
def fp(facesmith):
    from facesmith.core.identity import face_pipeline

    return face_pipeline


def _render(identity, attrs=None, size=128, view=None):
    from facesmith.core.synthface.render import render

    return render(identity, attrs or {}, size, view)


def test_synthface_renders_found_aligned_and_same_person_scores_higher(fp, models_dir):
    from facesmith.core.judges.align import ARCFACE_DST
    from facesmith.core.synthface.render import landmarks, random_attributes

    rng = np.random.default_rng(7)
    ids = [18, 39, 58, 79]  # held-out identities
    imgs, truth, who = [], [], []
    for ident in ids:
        for view in range(3):
            attrs = random_attributes(rng)
            imgs.append(_render(ident, attrs, 128, view))
            truth.append(landmarks(ident, attrs, 128, view))
            who.append(ident)
    faces = fp.analyze(np.stack(imgs))
    assert faces.detector == "synthface" and faces.recognizer == "synthface" and faces.synthface_recognizer
    assert len(faces) == len(imgs) and faces.skipped == [] and list(faces.image_index) == list(range(len(imgs)))
    assert np.abs(faces.landmarks - np.stack(truth)).mean() < 2.5  # pixels at 128x128
    # aligned crops put the eyes where the ArcFace template has them: dark pupils near the template's eye points
    assert faces.crops.shape == (len(imgs), 112, 112, 3)
    eye = ARCFACE_DST[0].round().astype(int)
    patch = faces.crops[:, eye[1] - 2:eye[1] + 3, eye[0] - 2:eye[0] + 3].mean(dim=(1, 2, 3))
    assert float(patch.mean()) < float(faces.crops.mean())
    sims = (faces.embeddings @ faces.embeddings.T).numpy()
    same = np.array(who)[:, None] == np.array(who)[None, :]
    off_diag = ~np.eye(len(imgs), dtype=bool)
    assert sims[same & off_diag].min() > sims[~same].max()
    assert sims[same & off_diag].mean() > faces.threshold > sims[~same].mean()
    assert "embeddings" not in repr(faces) and "tensor" not in repr(faces)


def test_no_face_error_names_the_image_and_the_synthface_limit(fp, models_dir):
    batch = np.stack([_render(18), np.full((128, 128, 3), 128, np.uint8), _render(39)])
    with pytest.raises(fp.NoFaceError, match=r"no face found in image 1 \(of 3") as info:
        fp.analyze(batch)
    assert "only know the SynthFace world" in str(info.value) and "retried with 25% padding" in str(info.value)


def test_skip_mode_reports_and_keeps_the_rest(fp, models_dir):
    from facesmith.core.identity.preview import describe, draw_faces

    batch = np.stack([_render(18), np.full((128, 128, 3), 128, np.uint8), _render(39)])
    faces = fp.analyze(batch, on_no_face="skip")
    assert faces.skipped == [1] and faces.per_image() == [[0], [], [1]] and list(faces.image_index) == [0, 2]
    assert faces.embeddings.shape[0] == 2
    text = describe(faces)
    assert "image 1: 0 face(s) found" in text and "skipped" in text and "built-in SynthFace detector" in text
    assert any("only know the SynthFace world" in n for n in faces.notes)
    drawn = draw_faces(list(batch), faces)
    assert (drawn[1][0, :, 0] > 200).all() and (drawn[1][0, :, 1] < 50).all()  # red frame: no face kept
    assert (drawn[0] != batch[0]).any() and drawn[0].shape == batch[0].shape


def test_rgba_and_grayscale_inputs(fp, models_dir):
    rgb = _render(18, {}, 128, 2)
    ref = fp.analyze(rgb)
    rgba = torch.from_numpy(np.concatenate([rgb, np.random.default_rng(0).integers(0, 256, (128, 128, 1),
                                                                                     dtype=np.uint8)], -1))
    from_rgba = fp.analyze(rgba.float()[None] / 255.0)
    assert np.allclose(from_rgba.boxes, ref.boxes, atol=1e-3)
    assert float(from_rgba.embeddings[0] @ ref.embeddings[0]) > 0.999
    gray = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
    for g in (gray, torch.from_numpy(gray)[None, ..., None].float() / 255.0):  # 2-D uint8, 1-channel IMAGE
        faces = fp.analyze(g)
        # the detector was trained on colour renders: grey input moves its landmarks a little (2.4 px measured at
        # 128 px with the identity-world detector), far less than a misplaced face would
        assert len(faces) == 1 and np.abs(faces.landmarks[0] - ref.landmarks[0]).mean() < 3.0


def test_retry_with_padding_finds_a_face_that_fills_the_frame(fp, models_dir):
    from facesmith.core.synthface.render import landmarks

    img, lm = _render(18), landmarks(18, {}, 128, None)
    m = 4  # margin around the landmarks: this tight, the detector finds no face without the padded retry
    x0, y0 = int(lm[:, 0].min()) - m, int(lm[:, 1].min()) - m
    crop = np.ascontiguousarray(img[y0:int(lm[:, 1].max()) + m, x0:int(lm[:, 0].max()) + m])
    with pytest.raises(fp.NoFaceError):
        fp.analyze(crop, retry=False)
    faces = fp.analyze(crop)
    assert faces.retried == [0] and len(faces) == 1
    # mapped back into the crop's pixels: a mapping error would be off by the padding (tens of pixels); the
    # detector's own error on a 32x44 crop is ~4 px
    assert np.abs(faces.landmarks[0] - (lm - [x0, y0])).mean() < 5.0


def test_several_faces_largest_index_all(fp, models_dir):
    from PIL import Image

    small = np.asarray(Image.fromarray(_render(39)).resize((80, 80), Image.BILINEAR))
    canvas = np.empty((128, 256, 3), np.uint8)
    canvas[:] = small[0, 0]             # the right render's background colour
    canvas[:, :128] = _render(18)       # left: a large face of 18
    canvas[24:104, 152:232] = small     # right: a smaller face of 39
    every = fp.analyze(canvas, select="all")
    assert len(every) == 2 and every.boxes[0, 0] < 128 < every.boxes[1, 0]  # left to right
    largest = fp.analyze(canvas)
    assert len(largest) == 1 and largest.boxes[0, 0] < 128 and len(largest.others) == 1
    right = fp.analyze(canvas, select="index", face_index=1)
    assert right.boxes[0, 0] > 128
    ref_39 = fp.analyze(_render(39))
    assert float(right.embeddings[0] @ ref_39.embeddings[0]) > float(largest.embeddings[0] @ ref_39.embeddings[0])
    with pytest.raises(fp.NoFaceError, match="has 2 face"):
        fp.analyze(canvas, select="index", face_index=2)


def test_similarity_and_compare(fp, models_dir):
    ref = fp.analyze(np.stack([_render(58, {}, 128, v) for v in range(2)]))
    scores, faces = fp.compare(np.stack([_render(58, {"glasses": True}, 128, 5), _render(79, {}, 128, 5),
                                         np.full((128, 128, 3), 90, np.uint8)]), ref)
    assert scores[2] is None and scores[0] > ref.threshold > scores[1]
    best = fp.similarity(faces, ref, "max")
    assert best.shape == (2,) and best[0] >= scores[0] - 1e-6
    no_emb = fp.analyze(_render(58), fp.FaceSettings(recognizer="none"))
    assert no_emb.embeddings is None
    with pytest.raises(ValueError, match="needs embeddings"):
        fp.similarity(no_emb, ref)


def test_missing_pack_names_the_expected_folder_and_files(fp, models_dir):
    from facesmith.core.identity.insightface_pack import PackError, find_pack

    with pytest.raises(PackError) as info:
        find_pack("buffalo_l")
    msg = str(info.value)
    assert str(models_dir / "insightface" / "models" / "buffalo_l") in msg
    assert "w600k_r50.onnx" in msg and "det_10g.onnx" in msg and "never downloads" in msg


@needs_insightface
def test_partial_pack_and_auto_choice(fp, models_dir):
    from facesmith.core.identity.insightface_pack import BUILTIN_PACK, PackError, find_pack

    builtin = find_pack(BUILTIN_PACK)
    pack = models_dir / "insightface" / "models" / "mypack"
    pack.mkdir(parents=True)
    shutil.copy(builtin / "det_synthface.onnx", pack / "det_synthface.onnx")
    with pytest.raises(PackError, match="has a detector \\(det_synthface.onnx\\) but no recognition model") as info:
        fp.analyze(_render(18), fp.FaceSettings(detector="insightface", recognizer="insightface", pack="mypack"))
    assert str(pack) in str(info.value) and "glintr100.onnx" in str(info.value)
    # detection alone works with the partial pack
    det_only = fp.analyze(_render(18), fp.FaceSettings(detector="insightface", recognizer="none", pack="mypack"))
    assert len(det_only) == 1 and det_only.detector == "insightface:mypack"
    # a complete user pack is what 'auto' picks
    shutil.copy(builtin / "rec_synthface.onnx", pack / "rec_synthface.onnx")
    resolved = fp.resolve(fp.FaceSettings())
    assert (resolved.detector, resolved.recognizer, resolved.pack) == ("insightface", "insightface", "mypack")
    onnx_faces = fp.analyze(_render(18))
    torch_faces = fp.analyze(_render(18), fp.FaceSettings(detector="synthface", recognizer="synthface"))
    assert float(onnx_faces.embeddings[0] @ torch_faces.embeddings[0]) > 0.99


@needs_insightface
def test_provider_fallback_to_cpu_says_why(fp, models_dir):
    import onnxruntime

    from facesmith.core.identity.insightface_pack import resolve_provider

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback cannot be seen here")
    providers, note = resolve_provider("CUDA")
    assert providers == ["CPUExecutionProvider"] and "onnxruntime-gpu" in note and "CUDA" in note
    faces = fp.analyze(_render(18), fp.FaceSettings(detector="insightface", recognizer="insightface",
                                                    pack="synthface", provider="CUDA"))
    assert len(faces) == 1 and any("runs on the CPU" in n for n in faces.notes)
    with pytest.raises(ValueError, match="unknown execution provider"):
        resolve_provider("Quantum")


def test_stand_in_nms_matches_torchvision_semantics(facesmith):
    from facesmith.core.identity.wheel_models import batched_nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1, 1]), 0.5).tolist() == [0, 2, 3]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0, 0]), 0.5).tolist() == [0, 3]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0, 0]), 0.9).tolist() == [0, 1, 3]


# ----------------------------------------------------------------------------------------------- nodes


def test_nodes_run_directly_and_write_nothing(facesmith, models_dir, tmp_path, monkeypatch):
    from facesmith.core.images import numpy_to_comfy
    from facesmith.nodes.identity_nodes import FaceSmithFaceAnalysis, FaceSmithFaceSimilarity

    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    ref_img = numpy_to_comfy(np.stack([_render(18, {}, 128, v) for v in range(2)]))
    out = FaceSmithFaceAnalysis().run(ref_img, "auto", "auto", "auto", "CPU", 640, "error", "largest", 0, True)
    faces, preview, crops, report = out["result"]
    assert len(faces) == 2 and preview.shape == ref_img.shape and crops.shape == (2, 112, 112, 3)
    assert "detector: built-in SynthFace detector" in report and "recognizer: built-in SynthFace recognizer" in report
    test_imgs = numpy_to_comfy(np.stack([_render(18, {"hat": True}, 128, 7), _render(79, {}, 128, 7),
                                         np.full((128, 128, 3), 128, np.uint8)]))
    sim = FaceSmithFaceSimilarity().run(test_imgs, faces, "mean", "largest")
    text, scores, mean = sim["result"]
    values = scores.split(", ")
    assert values[2] == "none" and float(values[0]) > faces.threshold > float(values[1])
    assert "image 0: similarity" in text and "(same person)" in text and "image 2: no face found" in text
    assert abs(mean - (float(values[0]) + float(values[1])) / 2) < 1e-3
    with pytest.raises(ValueError, match="Face Analysis \\(FaceSmith\\): input 'images' no face found in image 2"):
        FaceSmithFaceAnalysis().run(test_imgs, "auto", "auto", "auto", "CPU", 640, "error", "largest", 0, True)
    with pytest.raises(ValueError, match="input 'det_size'"):
        FaceSmithFaceAnalysis().run(ref_img, "auto", "auto", "auto", "CPU", 100, "error", "largest", 0, True)
    if HAS_INSIGHTFACE:
        with pytest.raises(ValueError, match="input 'provider' unknown execution provider"):
            FaceSmithFaceAnalysis().run(ref_img, "insightface", "auto", "synthface", "Quantum", 640, "error",
                                        "largest", 0, True)
    with pytest.raises(ValueError, match="input 'insightface_pack'"):
        FaceSmithFaceAnalysis().run(ref_img, "insightface", "auto", "nopack", "CPU", 640, "error", "largest", 0,
                                    True)
    assert sorted(os.listdir(tmp_path)) == before  # embeddings are personal data: nothing written


def test_nodes_in_a_headless_workflow(facesmith, models_dir, tmp_path):
    from facesmith import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from facesmith.core.runner import CORE_NODE_CLASS_MAPPINGS, run_workflow

    assert NODE_DISPLAY_NAME_MAPPINGS["FaceSmithFaceAnalysis"] == "Face Analysis (FaceSmith)"
    assert NODE_CLASS_MAPPINGS["FaceSmithFaceSimilarity"].CATEGORY == "FaceSmith/Identity"
    render = {"hair": "black", "expression": "neutral", "glasses": "no", "hat": "no", "beard": "no",
              "background": "gray", "size": 128}
    wf = {
        "1": {"class_type": "FaceSmithSynthFace", "inputs": {"identity": 18, "view": -1, **render}},
        "2": {"class_type": "FaceSmithFaceAnalysis",
              "inputs": {"images": ["1", 0], "detector": "auto", "recognizer": "auto", "insightface_pack": "auto",
                         "provider": "CPU", "det_size": 640, "on_no_face": "error", "select": "largest",
                         "face_index": 0, "retry": True}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": "faces/preview"}},
        "4": {"class_type": "FaceSmithSynthFace", "inputs": {"identity": 18, "view": 3, **render}},
        "5": {"class_type": "FaceSmithFaceSimilarity",
              "inputs": {"images": ["4", 0], "reference": ["2", 0], "combine": "mean", "face": "largest"}},
    }
    res = run_workflow(wf, {**NODE_CLASS_MAPPINGS, **CORE_NODE_CLASS_MAPPINGS}, tmp_path / "out", progress=False)
    saved = list((tmp_path / "out" / "faces").glob("preview_*.png"))
    assert len(saved) == 1
    report, scores, mean = res.outputs["5"]
    assert "image 0: similarity" in report and mean > 0.5 and float(scores) == pytest.approx(mean, abs=1e-4)


# ---------------------------------------------------------------------------------------- real photos


def _real_photos():
    import insightface
    from PIL import Image
    from skimage import data

    t1 = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    return data.astronaut(), np.asarray(Image.open(t1).convert("RGB"))


@needs_mtcnn
@needs_insightface
def test_mtcnn_finds_the_real_faces(fp, models_dir):
    astronaut, group = _real_photos()
    faces = fp.analyze([astronaut, group], fp.FaceSettings(detector="mtcnn", recognizer="none"), select="all")
    assert faces.found == [1, 6]
    x0, y0, x1, y1 = faces.boxes[0]
    assert 160 < x0 < 200 and 240 < x1 < 290 and 40 < y0 < 90 and 150 < y1 < 200  # the astronaut's face
    synth = fp.analyze(astronaut, fp.FaceSettings(detector="mtcnn", recognizer="synthface"))
    assert any("real-face detector but embedded by the built-in SynthFace recognizer" in n for n in synth.notes)


@needs_dlib
@needs_insightface
def test_dlib_recognizer_same_face_beats_other_people(fp, models_dir):
    _, group = _real_photos()
    settings = fp.FaceSettings(detector="dlib", recognizer="dlib")
    people = fp.analyze(group, settings, select="all")
    assert len(people) == 6 and people.recognizer == "dlib" and not people.synthface_recognizer
    flipped = fp.analyze(np.ascontiguousarray(group[:, ::-1]), settings, select="all")
    flipped_emb = flipped.embeddings.flip(0)  # left-to-right order reverses
    same = (people.embeddings * flipped_emb).sum(1)
    cross = people.embeddings @ people.embeddings.T
    other = cross[~torch.eye(6, dtype=torch.bool)]
    assert float(same.min()) > float(other.max())
    assert float(same.min()) > people.threshold > float(other.max())
