"""Stand-ins for the three ComfyUI core nodes FaceSmith workflows use: LoadImage, SaveImage and PreviewImage.

Same class names, input names, return types, file naming and PNG metadata as ComfyUI's ``nodes.py``, so a workflow
runs unchanged here and in ComfyUI. Folders come from ``directories(...)`` (the runner sets them), standing in for
ComfyUI's ``folder_paths``. Inside ComfyUI these classes are never registered: ComfyUI's own nodes are used.
One deliberate difference: LoadImage reads pixels through ``core.images.pil_to_float``, so 16-bit PNGs (mode
``I;16``) load scaled instead of clipped to white.
"""
from __future__ import annotations

import json
import os
import random
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, Optional

MAX_NAME_BYTES = 255  # one path component on common file systems (ext4, APFS, NTFS in UTF-16 units)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}

_dirs: dict[str, Optional[str]] = {"output": None, "input": None, "temp": None}


@contextmanager
def directories(output_dir: str, input_dir: str, temp_dir: str) -> Iterator[None]:
    """Set the output/input/temp folders for the duration of a run (restored afterwards)."""
    old = dict(_dirs)
    _dirs.update(output=os.path.abspath(output_dir), input=os.path.abspath(input_dir),
                 temp=os.path.abspath(temp_dir))
    try:
        yield
    finally:
        _dirs.update(old)


def get_directory(kind: str) -> str:
    return _dirs.get(kind) or os.path.abspath(kind)


def _inside(base: str, path: str) -> bool:
    base, path = os.path.abspath(base), os.path.abspath(path)
    return os.path.commonpath((base, path)) == base


def _list_input_images() -> list[str]:
    d = get_directory("input")
    try:
        names = os.listdir(d)
    except OSError:
        return []
    return sorted(f for f in names if os.path.isfile(os.path.join(d, f)) and f.lower().endswith(IMAGE_EXTENSIONS))


def annotated_filepath(name: str) -> str:
    """ComfyUI's get_annotated_filepath: "x.png", "sub/x.png", "x.png [output]". Raises ValueError on traversal."""
    kind = "input"
    for suffix, k in _ANNOTATIONS.items():
        if name.endswith(suffix):
            name, kind = name[: -len(suffix)], k
            break
    base = get_directory(kind)
    path = os.path.join(base, name)
    if os.path.isabs(name) or not _inside(base, path):
        raise ValueError(f"image path {name!r} points outside the {kind} folder {base}")
    return path


class LoadImage:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"image": (_list_input_images(), {"image_upload": True})}}

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    def load_image(self, image):
        import torch
        from PIL import Image, ImageOps, ImageSequence

        from ..images import pil_alpha, pil_to_float

        img = Image.open(annotated_filepath(image))
        output_images, output_masks = [], []
        w = h = None
        for i in ImageSequence.Iterator(img):
            i = ImageOps.exif_transpose(i)
            if not output_images:
                w, h = i.size
            if i.size != (w, h):
                continue
            # the one mode-aware conversion (16-bit PNGs scaled, not clipped to white)
            arr = torch.from_numpy(pil_to_float(i))[None,]
            alpha = pil_alpha(i)
            if alpha is not None:
                mask = 1.0 - torch.from_numpy(alpha)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32, device="cpu")
            output_images.append(arr)
            output_masks.append(mask.unsqueeze(0))
        if len(output_images) > 1 and img.format not in ("MPO",):
            return (torch.cat(output_images, dim=0), torch.cat(output_masks, dim=0))
        return (output_images[0], output_masks[0])

    @classmethod
    def VALIDATE_INPUTS(s, image):
        try:
            path = annotated_filepath(image)
        except ValueError as e:
            return f"Invalid image file: {e}"
        if not os.path.isfile(path):
            from .spec import format_choices

            return (f"Invalid image file: {image} (not found in the input folder {get_directory('input')}; "
                    f"available: {format_choices(_list_input_images())})")
        return True


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0):
    """ComfyUI's folder_paths.get_save_image_path: (folder, filename, counter, subfolder, prefix); the counter
    continues after the highest ``<prefix>_NNNNN_`` already in the folder."""

    def map_filename(filename: str) -> tuple[int, str]:
        prefix_len = len(os.path.basename(filename_prefix))
        prefix = filename[: prefix_len + 1]
        try:
            digits = int(filename[prefix_len + 1:].split("_")[0])
        except ValueError:
            digits = 0
        return digits, prefix

    def compute_vars(text: str) -> str:
        now = time.localtime()
        for key, val in (("%width%", str(image_width)), ("%height%", str(image_height)),
                         ("%year%", str(now.tm_year)), ("%month%", str(now.tm_mon).zfill(2)),
                         ("%day%", str(now.tm_mday).zfill(2)), ("%hour%", str(now.tm_hour).zfill(2)),
                         ("%minute%", str(now.tm_min).zfill(2)), ("%second%", str(now.tm_sec).zfill(2))):
            text = text.replace(key, val)
        return text

    if "%" in filename_prefix:
        filename_prefix = compute_vars(filename_prefix)
    output_dir = os.path.abspath(output_dir)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.isabs(filename_prefix) or not _inside(output_dir, full_output_folder) or not filename or \
            filename in (".", ".."):
        raise ValueError(f"filename_prefix {filename_prefix!r}: saving outside the output folder {output_dir} is "
                         "not allowed")
    try:
        counter = max(
            (d for d, p in map(map_filename, os.listdir(full_output_folder))
             if os.path.normcase(p[:-1]) == os.path.normcase(filename) and p[-1:] == "_"),
            default=0,
        ) + 1
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        counter = 1
    return full_output_folder, filename, counter, subfolder, filename_prefix


def _save_png_new_file(img, folder: str, name_for, counter: int, pnginfo, compress_level: int) -> tuple[str, int]:
    """Write ``img`` atomically under the first free ``name_for(counter)``; never replaces an existing file."""
    tmp = os.path.join(folder, f".facesmith-{uuid.uuid4().hex}.png.tmp")
    try:  # the save itself may fail half-way (a full disk): the temporary file goes on every path
        img.save(tmp, format="PNG", pnginfo=pnginfo, compress_level=compress_level)
        while True:
            final = os.path.join(folder, name_for(counter))
            try:
                os.link(tmp, final)  # atomic, fails if the name exists
                return name_for(counter), counter
            except FileExistsError:
                counter += 1
            except OSError:  # no hard links on this filesystem
                if os.path.exists(final):
                    counter += 1
                    continue
                os.replace(tmp, final)
                return name_for(counter), counter
    finally:
        _remove_quietly(tmp)


def _remove_quietly(path: str) -> None:
    """Remove ``path`` if it exists, never raising (an error here must not hide the one that got us here)."""
    try:
        os.unlink(path)
    except OSError:
        pass


class SaveImage:
    def __init__(self):
        self.output_dir = get_directory("output")
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save. "
                                               "This may include formatting information such as %date:yyyy-MM-dd% "
                                               "or %Empty Latent Image.width% to include values from nodes."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        import numpy as np
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        filename_prefix += self.prefix_append
        full_output_folder, filename, counter, subfolder, filename_prefix = get_save_image_path(
            filename_prefix, self.output_dir, images[0].shape[1], images[0].shape[0])
        results = []
        for batch_number, image in enumerate(images):
            i = 255.0 * image.cpu().numpy()
            img = Image.fromarray(np.clip(i, 0, 255).astype(np.uint8))
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            if extra_pnginfo is not None:
                for x in extra_pnginfo:
                    metadata.add_text(x, json.dumps(extra_pnginfo[x]))
            base = filename.replace("%batch_num%", str(batch_number))
            file, counter = _save_png_new_file(img, full_output_folder, lambda c: f"{base}_{c:05}_.png", counter,
                                               metadata, self.compress_level)
            results.append({"filename": file, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}

    @classmethod
    def VALIDATE_INPUTS(s, filename_prefix="ComfyUI"):
        # not in ComfyUI's SaveImage (it fails at run time); here a bad prefix is caught before anything runs
        if not isinstance(filename_prefix, str):
            return f"filename_prefix must be a string, got {filename_prefix!r}"
        if "\x00" in filename_prefix:
            return f"filename_prefix {filename_prefix!r} contains a NUL byte"
        for part in filename_prefix.replace("\\", "/").split("/"):
            # the file name gets "_00001_.png" (and PreviewImage a "_temp_xxxxx" tag): leave room for them
            if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES - 32:
                return (f"filename_prefix part {part[:40]!r}... is {len(part.encode('utf-8', 'surrogatepass'))} "
                        f"bytes; file names may have at most {MAX_NAME_BYTES - 32} here (the counter and "
                        "extension need the rest)")
        base = get_directory("output")
        norm = os.path.normpath(filename_prefix)
        if os.path.isabs(filename_prefix) or not _inside(base, os.path.join(base, os.path.dirname(norm))) or \
                os.path.basename(norm) in ("", ".", ".."):
            return f"filename_prefix {filename_prefix!r} points outside the output folder; use a relative name " \
                   "such as 'faces/run1'"
        return True


class PreviewImage(SaveImage):
    def __init__(self):
        self.output_dir = get_directory("temp")
        self.type = "temp"
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


CORE_NODE_CLASS_MAPPINGS = {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage}
CORE_NODE_DISPLAY_NAME_MAPPINGS = {"LoadImage": "Load Image", "SaveImage": "Save Image", "PreviewImage": "Preview Image"}
