"""Every PIL image mode loads with the right values through the one conversion (``core.images.pil_to_float``): the
runner's LoadImage, ``pil_to_numpy`` and dataset folders (issue 19: 16-bit PNGs loaded almost all white)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import tiny_models  # noqa: F401  (makes the pack importable as ``facesmith``)
from facesmith.core import images
from facesmith.core.runner import comfy_core_nodes as core


def _palette_image(transparent: bool) -> Image.Image:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 200, 100, 50] + [0] * (256 * 3 - 6))
    if transparent:
        im.info["transparency"] = 1
    return im


# mode -> (image, file suffix, expected RGB of every pixel in [0, 1], expected alpha or None)
CASES = {
    "RGB": (lambda: Image.new("RGB", (4, 4), (10, 20, 30)), ".png", (10 / 255, 20 / 255, 30 / 255), None),
    "RGBA": (lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 128)), ".png", (10 / 255, 20 / 255, 30 / 255), 128 / 255),
    "LA": (lambda: Image.new("LA", (4, 4), (100, 50)), ".png", (100 / 255,) * 3, 50 / 255),
    "L": (lambda: Image.new("L", (4, 4), 77), ".png", (77 / 255,) * 3, None),
    "P": (lambda: _palette_image(False), ".png", (200 / 255, 100 / 255, 50 / 255), None),
    "P+transparency": (lambda: _palette_image(True), ".png", (200 / 255, 100 / 255, 50 / 255), 0.0),
    "CMYK": (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), ".tif", (1.0, 0.0, 0.0), None),
    "I;16": (lambda: Image.fromarray(np.full((4, 4), 32768, np.uint16)), ".png", (32768 / 65535,) * 3, None),
    "I;16 dark": (lambda: Image.fromarray(np.full((4, 4), 1000, np.uint16)), ".png", (1000 / 65535,) * 3, None),
    "I": (lambda: Image.fromarray(np.full((4, 4), 16384, np.int32)), ".tif", (16384 / 65535,) * 3, None),
    "F": (lambda: Image.fromarray(np.full((4, 4), 128.0, np.float32)), ".tif", (128 / 255,) * 3, None),
}


@pytest.mark.parametrize("mode", list(CASES))
def test_pil_to_float_scales_every_mode(mode):
    make, _suffix, rgb, alpha = CASES[mode]
    im = make()
    out = images.pil_to_float(im)
    assert out.shape == (4, 4, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(np.float32(rgb), out.shape), atol=1 / 255 / 2 + 1e-6)
    got_alpha = images.pil_alpha(im)
    if alpha is None:
        assert got_alpha is None
    else:
        np.testing.assert_allclose(got_alpha, alpha, atol=1e-6)


@pytest.mark.parametrize("mode", list(CASES))
def test_load_image_node_reads_every_mode_from_disk(tmp_path, mode):
    make, suffix, rgb, alpha = CASES[mode]
    (tmp_path / "in").mkdir()
    make().save(tmp_path / "in" / f"x{suffix}")
    with core.directories(str(tmp_path / "out"), str(tmp_path / "in"), str(tmp_path / "temp")):
        image, mask = core.LoadImage().load_image(f"x{suffix}")
    assert image.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(image[0].numpy(), np.broadcast_to(np.float32(rgb), (4, 4, 3)),
                               atol=1 / 255 / 2 + 1e-6)
    if alpha is not None:
        np.testing.assert_allclose(mask.numpy(), 1.0 - alpha, atol=1e-6)
    else:
        assert not mask.any()


def test_sixteen_bit_png_is_not_white_in_uint8_paths(tmp_path):
    from facesmith.core.synthface.dataset import load_images

    ramp = (np.arange(16, dtype=np.uint32).reshape(4, 4) * 4369).astype(np.uint16)  # 0 .. 65535
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as im:
        assert im.mode.startswith("I")
        u8 = images.pil_to_numpy(im)[0, ..., 0]
    np.testing.assert_array_equal(u8, np.round(ramp / 65535 * 255).astype(np.uint8))
    loaded = load_images([{"path": tmp_path / "ramp.png"}], 4)[0, ..., 0]
    assert abs(int(loaded.astype(int).mean()) - int(u8.astype(int).mean())) <= 2 and loaded.min() < 64
