"""core.formats (safe joins, atomic no-overwrite writes, safetensors), core.paths, core.devices and core.images."""
from __future__ import annotations

import logging
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models  # noqa: F401  (makes the pack importable as ``facesmith``)
from facesmith.core import devices, formats, images, paths


@pytest.fixture
def standalone(tmp_path, monkeypatch):
    """Standalone lookup in a fresh models dir, with a fresh built-in root instead of the pack's assets."""
    user = tmp_path / "user_models"
    builtin = tmp_path / "builtin_models"
    user.mkdir()
    builtin.mkdir()
    monkeypatch.setattr(paths, "_comfy_folder_paths", None)
    monkeypatch.setattr(paths, "_models_dir_override", None)
    monkeypatch.setattr(paths, "_builtin_roots", [builtin])
    monkeypatch.setenv(paths.ENV_MODELS, str(user))
    return user, builtin


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name", ["a.safetensors", "sub/dir/a.safetensors", "./a.safetensors", "a b/c"])
def test_safe_join_accepts_relative_names(tmp_path, name):
    joined = formats.safe_join(tmp_path, name)
    assert joined.resolve().is_relative_to(tmp_path.resolve())
    assert joined.name == Path(name).name


@pytest.mark.parametrize("name", [
    "../evil.safetensors", "a/../../evil", "..", "/etc/passwd", "C:/Windows/x", "c:evil", "a\\..\\..\\evil",
    "", "   ", "a\x00b", ".", "./",
])
def test_safe_join_rejects_traversal_and_junk(tmp_path, name):
    with pytest.raises(ValueError):
        formats.safe_join(tmp_path, name)


def test_safe_join_rejects_non_strings(tmp_path):
    with pytest.raises(TypeError):
        formats.safe_join(tmp_path, None)


def test_atomic_write_never_overwrites_unless_asked(tmp_path):
    target = tmp_path / "deep" / "out.txt"
    formats.atomic_write_text(target, "first")
    assert target.read_text() == "first"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        formats.atomic_write_text(target, "second")
    assert target.read_text() == "first"
    formats.atomic_write_text(target, "third", overwrite=True)
    assert target.read_text() == "third"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]  # no temporary files left
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "model.safetensors"
    with pytest.raises(RuntimeError, match="boom"):
        with formats.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # an existing file is untouched by a failed overwrite
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with formats.atomic_path(target, overwrite=True) as tmp:
            tmp.write_bytes(b"bad")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"good"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_no_overwrite_when_file_appears_meanwhile(tmp_path):
    target = tmp_path / "race.txt"
    with pytest.raises(FileExistsError):
        with formats.atomic_path(target) as tmp:
            tmp.write_text("mine")
            target.write_text("theirs")  # someone else wrote it while we worked
    assert target.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["race.txt"]


def test_next_free_path(tmp_path):
    first = tmp_path / "img.png"
    assert formats.next_free_path(first) == first
    first.write_bytes(b"1")
    second = formats.next_free_path(first)
    assert second.name == "img_00001.png"
    second.write_bytes(b"2")
    assert formats.next_free_path(first).name == "img_00002.png"


def test_safetensors_roundtrip_with_metadata(tmp_path):
    path = tmp_path / "enc.safetensors"
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"a": base, "b": base[:, 1], "c": torch.ones(2, dtype=torch.float16)}  # b shares a's storage
    formats.save_safetensors(path, tensors, metadata={"fingerprint": "abc", "config": {"rank": 4, "layers": [1, 2]}})
    loaded, meta = formats.load_safetensors(path)
    assert set(loaded) == {"a", "b", "c"}
    assert torch.equal(loaded["b"], base[:, 1]) and loaded["c"].dtype == torch.float16
    assert meta["fingerprint"] == "abc"
    assert __import__("json").loads(meta["config"]) == {"layers": [1, 2], "rank": 4}
    assert formats.read_safetensors_metadata(path) == meta
    assert sorted(formats.safetensors_keys(path)) == ["a", "b", "c"]
    with pytest.raises(FileExistsError):
        formats.save_safetensors(path, {"a": base})
    formats.save_safetensors(path, {"z": base}, overwrite=True)
    assert formats.safetensors_keys(path) == ["z"]


def test_only_safetensors_are_loaded(tmp_path):
    pickled = _touch(tmp_path / "model.ckpt")
    with pytest.raises(ValueError, match="only from .safetensors"):
        formats.load_safetensors(pickled)
    with pytest.raises(FileNotFoundError):
        formats.load_safetensors(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="no tensors"):
        formats.save_safetensors(tmp_path / "empty.safetensors", {})


# ------------------------------------------------------------------------------------------------------ paths


def test_standalone_layout_listing_and_resolve(standalone):
    user, builtin = standalone
    _touch(user / "checkpoints" / "b.safetensors")
    _touch(user / "checkpoints" / "sub" / "a.safetensors")
    _touch(user / "checkpoints" / "old.ckpt")  # never loaded, so never listed
    _touch(user / "checkpoints" / ".hidden.safetensors")
    _touch(user / "diffusers" / "mine" / "model_index.json", b"{}")
    _touch(user / "diffusers" / "mine" / "unet" / "model_index.json", b"{}")  # not descended into
    (user / "diffusers" / "not-a-model").mkdir()
    _touch(builtin / "diffusers" / "synthface-base" / "model_index.json", b"{}")
    _touch(builtin / "diffusers" / "mine" / "model_index.json", b"{}")  # shadowed by the user's
    _touch(builtin / "checkpoints" / "builtin.safetensors")

    assert paths.list_models("checkpoints") == ["b.safetensors", "sub/a.safetensors", "builtin.safetensors"]
    assert paths.list_models("diffusers") == ["mine", "synthface-base"]
    assert paths.resolve("diffusers", "mine") == user / "diffusers" / "mine"
    assert paths.resolve("diffusers", "synthface-base") == builtin / "diffusers" / "synthface-base"
    assert paths.resolve("checkpoints", "sub/a.safetensors") == user / "checkpoints" / "sub" / "a.safetensors"
    assert paths.models_root("loras") == user / "loras"
    assert paths.search_roots("loras") == [user / "loras", builtin / "loras"]
    assert paths.list_models("loras") == []


def test_resolve_errors_name_kind_name_and_folders(standalone):
    user, builtin = standalone
    with pytest.raises(FileNotFoundError) as info:
        paths.resolve("checkpoints", "nope.safetensors")
    message = str(info.value)
    for part in ("checkpoints", "'nope.safetensors'", str(user / "checkpoints"), str(builtin / "checkpoints"),
                 ".safetensors"):
        assert part in message
    with pytest.raises(ValueError, match=r"\.\."):
        paths.resolve("checkpoints", "../../etc/passwd")
    with pytest.raises(ValueError, match="unknown model kind"):
        paths.list_models("vaes")


def test_a_folder_is_not_a_checkpoint_and_a_file_is_not_a_diffusers_model(standalone):
    user, _ = standalone
    (user / "checkpoints" / "x.safetensors").mkdir(parents=True)
    _touch(user / "diffusers" / "file-model")
    assert paths.find("checkpoints", "x.safetensors") is None
    assert paths.find("diffusers", "file-model") is None


def test_models_dir_precedence_read_at_call_time(standalone, tmp_path, monkeypatch):
    user, _ = standalone
    assert paths.models_dir() == user
    other = tmp_path / "other"
    monkeypatch.setenv(paths.ENV_MODELS, str(other))
    assert paths.models_root("facesmith") == other / "facesmith"
    paths.set_models_dir(tmp_path / "cli")
    try:
        assert paths.models_dir() == tmp_path / "cli"
    finally:
        paths.set_models_dir(None)
    monkeypatch.delenv(paths.ENV_MODELS)
    monkeypatch.chdir(tmp_path)
    assert paths.models_dir() == tmp_path / "models"
    monkeypatch.setenv(paths.ENV_OUTPUT, str(tmp_path / "out"))
    assert paths.output_dir() == tmp_path / "out"


def _fake_folder_paths(root: Path):
    """A duck-typed stand-in for ComfyUI's folder_paths module (the functions FaceSmith calls)."""
    fp = types.SimpleNamespace()
    fp.models_dir = str(root / "models")
    fp.folder_names_and_paths = {
        kind: ([str(root / "models" / kind), str(root / "extra" / kind)], set())
        for kind in ("checkpoints", "diffusers", "loras", "embeddings", "clip_vision", "configs")
    }

    def get_folder_paths(name):
        return fp.folder_names_and_paths[name][0][:]

    def add_model_folder_path(name, path, is_default=False):
        fp.folder_names_and_paths.setdefault(name, ([], set()))[0].append(path)

    fp.get_folder_paths = get_folder_paths
    fp.add_model_folder_path = add_model_folder_path
    fp.get_output_directory = lambda: str(root / "comfy_output")
    return fp


def test_comfy_folders_are_used_and_ours_registered(standalone, tmp_path, monkeypatch):
    _, builtin = standalone
    fp = _fake_folder_paths(tmp_path / "comfy")
    paths.register_comfy_folders(fp)
    assert fp.get_folder_paths("facesmith") == [str(tmp_path / "comfy" / "models" / "facesmith")]
    assert fp.get_folder_paths("insightface") == [str(tmp_path / "comfy" / "models" / "insightface")]
    assert len(fp.get_folder_paths("checkpoints")) == 2  # existing kinds untouched
    paths.register_comfy_folders(fp)  # idempotent
    assert len(fp.get_folder_paths("facesmith")) == 1

    _touch(tmp_path / "comfy" / "extra" / "checkpoints" / "from_yaml.safetensors")
    _touch(builtin / "checkpoints" / "builtin.safetensors")
    assert paths.list_models("checkpoints") == ["from_yaml.safetensors", "builtin.safetensors"]
    assert paths.models_root("checkpoints") == tmp_path / "comfy" / "models" / "checkpoints"
    assert paths.output_dir() == tmp_path / "comfy" / "comfy_output"

    paths.register_kind("judges", extensions=(".safetensors",))
    try:
        assert fp.get_folder_paths("judges") == [str(tmp_path / "comfy" / "models" / "judges")]
    finally:
        paths.KINDS.pop("judges")


# ---------------------------------------------------------------------------------------------------- devices


def test_pick_device_and_dtype(caplog):
    assert devices.pick_device("cpu") == torch.device("cpu")
    auto = devices.pick_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    assert devices.pick_dtype("auto", "cpu") == torch.float32
    assert devices.pick_dtype("auto", "cuda") == torch.float16
    assert devices.pick_dtype("bf16", "cpu") == torch.bfloat16
    assert devices.pick_dtype(torch.float32, "cpu") == torch.float32
    with caplog.at_level(logging.WARNING, logger="facesmith"):
        assert devices.pick_dtype("fp16", "cpu") == torch.float32
    assert "fp16 is not supported on the CPU" in caplog.text
    with pytest.raises(ValueError, match="unknown dtype"):
        devices.pick_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        devices.pick_device("tpu")
    assert devices.dtype_name(torch.bfloat16) == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no usable CUDA"):
        devices.pick_device("cuda")


# ----------------------------------------------------------------------------------------------------- images


def test_image_conversions_roundtrip():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    comfy = images.numpy_to_comfy(arr)
    assert comfy.shape == (2, 5, 7, 3) and comfy.dtype == torch.float32
    assert 0.0 <= comfy.min() and comfy.max() <= 1.0
    assert np.array_equal(images.comfy_to_numpy(comfy), arr)
    pils = images.comfy_to_pil(comfy)
    assert [p.size for p in pils] == [(7, 5), (7, 5)] and pils[0].mode == "RGB"
    assert torch.equal(images.pil_to_comfy(pils), comfy)
    model = images.comfy_to_model(comfy)
    assert model.shape == (2, 3, 5, 7) and model.min() >= -1.0 and model.max() <= 1.0
    assert torch.allclose(images.model_to_comfy(model), comfy, atol=1e-6)
    assert np.array_equal(images.pil_to_numpy(images.model_to_pil(images.pil_to_model(pils))), arr)
    assert torch.equal(images.unit_bchw_to_comfy(comfy.permute(0, 3, 1, 2)), comfy)


def test_image_conversions_channels_and_errors():
    gray = Image.fromarray(np.full((4, 4), 200, dtype=np.uint8), "L")
    assert images.pil_to_numpy(gray)[0, 0, 0].tolist() == [200, 200, 200]
    rgba = torch.rand(1, 4, 4, 4)
    assert images.comfy_to_model(rgba).shape == (1, 3, 4, 4)
    nan = torch.full((1, 3, 2, 2), float("nan"))
    assert images.model_to_comfy(nan).eq(0).all()
    assert images.check_comfy(torch.rand(4, 4, 3)).shape == (1, 4, 4, 3)
    with pytest.raises(ValueError, match="same size"):
        images.pil_to_numpy([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))])
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        images.comfy_to_pil(torch.rand(1, 3, 8, 8, 2))
    with pytest.raises(TypeError):
        images.numpy_to_comfy(np.zeros((1, 2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        images.model_to_comfy(torch.zeros(1, 4, 2, 2))
