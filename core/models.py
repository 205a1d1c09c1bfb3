"""Loading frozen base pipelines (SD1.5 / SDXL) offline, from a diffusers folder or a single-file checkpoint.

Everything loads with ``local_files_only=True`` and from safetensors only. A single-file checkpoint needs a diffusers
*config* folder (configs, tokenizer, scheduler; no weights) on disk, searched in this order:

1. the explicit ``config`` argument (a folder, or a name under ``models/configs/``);
2. ``models/configs/<checkpoint stem>/``;
3. ``models/configs/<arch>/`` (``sd15`` or ``sdxl``);
4. a folder named like the checkpoint stem beside it (``checkpoints/foo.safetensors`` -> ``checkpoints/foo/``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import paths
from .devices import dtype_name, pick_device, pick_dtype
from .formats import safetensors_keys

log = logging.getLogger("facesmith")

ARCH_CHOICES = ("auto", "sd15", "sdxl")
ARCH_LABELS = {"sd15": "SD1.5", "sdxl": "SDXL"}
PIPELINE_CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
_ARCH_OF_CLASS = {v: k for k, v in PIPELINE_CLASSES.items()}

# What a config folder for a single-file checkpoint must hold, per arch.
_CONFIG_FILES = {
    "sd15": ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
             "tokenizer/", "scheduler/scheduler_config.json"],
    "sdxl": ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
             "text_encoder_2/config.json", "tokenizer/", "tokenizer_2/", "scheduler/scheduler_config.json"],
}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # either a tokenizers file or vocab.json + merges.txt

BASE_MODEL_KINDS = ("diffusers", "checkpoints")  # how base models are named: "<kind>/<name>"


def native_size(dp) -> int:
    """The image size (px) the diffusers pipeline ``dp`` was built for: UNet sample size x VAE scale factor."""
    return int(dp.unet.config.sample_size) * int(getattr(dp, "vae_scale_factor", 8))


@dataclass
class BasePipeline:
    """A loaded, frozen base pipeline and what identifies it.

    ``fingerprint`` is a short hash of the model identity (arch, component shapes and a fixed sample of UNet, text
    encoder and VAE weights rounded to fp16). It is the same for a model loaded from its diffusers folder or from a
    single-file export, on any device, in fp32 or fp16; a bf16 load rounds weights differently and hashes
    differently. Trained encoders/adapters store it to check they are used with their base.
    """

    pipe: object  # a diffusers StableDiffusionPipeline / StableDiffusionXLPipeline
    arch: str
    name: str
    source: Path
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    extra: dict = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    @property
    def native_size(self) -> int:
        """The image size (px) the model was built for: UNet sample size x VAE scale factor."""
        return native_size(self.pipe)

    def __repr__(self) -> str:  # keep ComfyUI's and pytest's output short
        return (f"BasePipeline({self.arch} {self.name!r}, {self.device}, {dtype_name(self.dtype)}, "
                f"fingerprint={self.fingerprint})")


# ------------------------------------------------------------------------------------------------ names & arch


def list_base_models() -> list[str]:
    """Every loadable base model as ``"diffusers/<folder>"`` or ``"checkpoints/<file>"`` (diffusers folders first)."""
    return [f"{kind}/{name}" for kind in BASE_MODEL_KINDS for name in paths.list_models(kind)]


def resolve_base_model(choice: str) -> Path:
    """``"diffusers/<name>"`` or ``"checkpoints/<name>"`` -> its path (``FileNotFoundError`` names what was
    searched)."""
    kind, sep, name = str(choice).partition("/")
    if not sep or kind not in BASE_MODEL_KINDS or not name:
        raise ValueError(
            f"base model {choice!r} must be 'diffusers/<folder name>' or 'checkpoints/<file name>'"
        )
    return paths.resolve(kind, name)


def detect_arch_from_keys(keys) -> str:
    """``"sd15"`` or ``"sdxl"`` from the tensor names of an original-layout checkpoint; unsupported ones raise."""
    keys = list(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("conditioner.embedders.1."):
        return "sdxl"
    if has("conditioner.embedders.0.model."):
        raise ValueError("this looks like an SDXL refiner checkpoint; FaceSmith supports SD1.5 and SDXL base models")
    if has("cond_stage_model.model."):
        raise ValueError("this looks like an SD2.x checkpoint (OpenCLIP text encoder); "
                         "FaceSmith supports SD1.5 and SDXL")
    if has("cond_stage_model.transformer."):
        return "sd15"
    if has("model.diffusion_model."):
        raise ValueError("this checkpoint has a UNet but no text encoder (cond_stage_model/conditioner keys); "
                         "FaceSmith needs a full SD1.5 or SDXL checkpoint")
    raise ValueError("this is not a Stable Diffusion checkpoint (no model.diffusion_model.* keys)")


class ArchMismatch(ValueError):
    """The ``arch`` asked for is not the arch of the model found."""


def _check_arch(asked: str) -> str:
    if asked not in ARCH_CHOICES:
        raise ValueError(f"arch must be one of {', '.join(ARCH_CHOICES)}, got {asked!r}")
    return asked


def _arch_matches(asked: str, found: str, what: str) -> str:
    if asked != "auto" and asked != found:
        raise ArchMismatch(f"{what} is {ARCH_LABELS[found]} but arch={asked!r} was asked for; use 'auto' or '{found}'")
    return found


# ------------------------------------------------------------------------------------------------ config folders


def _missing_config_files(folder: Path, arch: str) -> list[str]:
    missing = []
    for rel in _CONFIG_FILES[arch]:
        if rel.endswith("/"):
            sub = folder / rel
            if not any((sub / f).is_file() for f in _TOKENIZER_FILES):
                missing.append(f"{rel}tokenizer.json (or {rel}vocab.json + {rel}merges.txt)")
        elif not (folder / rel).is_file():
            missing.append(rel)
    return missing


def _config_files_text(arch: str) -> str:
    return ", ".join(r + ("*" if r.endswith("/") else "") for r in _CONFIG_FILES[arch])


def _validate_config_folder(folder: Path, arch: str, checkpoint: Path) -> Path:
    missing = _missing_config_files(folder, arch)
    if missing:
        raise FileNotFoundError(
            f"config folder {folder} for checkpoint {checkpoint.name} is incomplete: missing {', '.join(missing)} "
            f"(a {ARCH_LABELS[arch]} config folder needs {_config_files_text(arch)}; weights are not needed)"
        )
    class_name = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    if class_name != PIPELINE_CLASSES[arch]:
        raise ValueError(
            f"config folder {folder} is for {class_name}, but checkpoint {checkpoint.name} is {ARCH_LABELS[arch]} "
            f"({PIPELINE_CLASSES[arch]})"
        )
    return folder


def find_config_folder(checkpoint: Path, arch: str, config: str | os.PathLike | None = None) -> Path:
    """The diffusers config folder for a single-file ``checkpoint`` of ``arch`` (search order in the module doc)."""
    checkpoint = Path(checkpoint)
    if config is not None:
        folder = Path(config)
        if not folder.is_dir():
            found = paths.find("configs", str(config)) if not folder.is_absolute() else None
            if found is None:
                raise FileNotFoundError(
                    f"config {str(config)!r} for checkpoint {checkpoint.name} is neither a folder nor a config name "
                    f"under {', '.join(str(r) for r in paths.search_roots('configs'))}"
                )
            folder = found
        return _validate_config_folder(folder, arch, checkpoint)
    stem = checkpoint.stem
    candidates = []
    for name in (stem, arch):
        for root in paths.search_roots("configs"):
            candidates.append(root / name)
    beside = checkpoint.parent / stem
    candidates.append(beside)
    for folder in candidates:
        if (folder / "model_index.json").is_file():
            return _validate_config_folder(folder, arch, checkpoint)
    user_configs = paths.models_root("configs")
    raise FileNotFoundError(
        f"checkpoint {checkpoint.name} ({checkpoint}) is a single-file {ARCH_LABELS[arch]} checkpoint; loading it "
        f"offline needs a diffusers config folder for {ARCH_LABELS[arch]} ({_config_files_text(arch)}; the weights "
        f"are not needed). Put it at {user_configs / stem}/ (for this checkpoint), at {user_configs / arch}/ (for "
        f"every {ARCH_LABELS[arch]} checkpoint) or next to the checkpoint as {beside}/. Searched: "
        + ", ".join(str(c) for c in candidates)
    )


# ------------------------------------------------------------------------------------------------- fingerprint

_FINGERPRINT_SAMPLE = 4096


def vae_fingerprint(pipe) -> str:
    """16 hex digits over ALL of the VAE's weights: what a cache of encoded images (a training pool's latents and
    patch features) depends on. A base whose UNet or text encoder changed keeps it; another VAE does not."""
    from .formats import weights_digest

    return weights_digest("vae", getattr(pipe, "pipe", pipe).vae.state_dict())


def compute_fingerprint(pipe, arch: str) -> str:
    """16 hex chars identifying the model (see ``BasePipeline``); reads a few small slices of weights."""
    h = hashlib.sha256()
    h.update(f"facesmith-base-v1|{arch}".encode())
    tensors = [
        ("unet.conv_in", pipe.unet.conv_in.weight),
        ("unet.conv_out", pipe.unet.conv_out.weight),
        ("unet.time_embedding", pipe.unet.time_embedding.linear_1.weight),
        ("text_encoder.tokens", pipe.text_encoder.get_input_embeddings().weight),
        ("vae.decoder.conv_out", pipe.vae.decoder.conv_out.weight),
    ]
    mid_attentions = getattr(getattr(pipe.unet, "mid_block", None), "attentions", None)
    if mid_attentions:  # attention weights: what LoRA-merged fine-tunes change
        block = mid_attentions[0].transformer_blocks[0]
        tensors += [("unet.mid.attn1.to_q", block.attn1.to_q.weight), ("unet.mid.attn2.to_k", block.attn2.to_k.weight)]
    for part in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, part, None)
        if encoder is None:
            continue
        if part == "text_encoder_2":
            tensors.append((f"{part}.tokens", encoder.get_input_embeddings().weight))
        q_proj = next((m.weight for n, m in encoder.named_modules() if n.endswith("layers.0.self_attn.q_proj")), None)
        if q_proj is not None:
            tensors.append((f"{part}.layer0.q_proj", q_proj))
    with torch.no_grad():
        for name, t in tensors:
            sample = t.detach().reshape(-1)[:_FINGERPRINT_SAMPLE].to("cpu", torch.float16).numpy()
            h.update(f"|{name}|{tuple(t.shape)}|".encode())
            h.update(sample.tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------ loading


def _pipeline_class(arch: str):
    import diffusers

    return getattr(diffusers, PIPELINE_CLASSES[arch])


def _dtype_kwarg() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (deprecating the old name) in 2026; older ones only know
    ``torch_dtype`` and would silently ignore ``dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def _load_kwargs(arch: str, dtype: torch.dtype) -> dict:
    kwargs = {_dtype_kwarg(): dtype, "local_files_only": True, "feature_extractor": None, "image_encoder": None}
    if arch == "sd15":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    return kwargs


def _weights_variant(folder: Path) -> Optional[str]:
    """``"fp16"`` when the UNet is only there as ``diffusion_pytorch_model.fp16.safetensors`` (a common download)."""
    unet = folder / "unet"
    plain = any((unet / f"diffusion_pytorch_model.safetensors{x}").is_file() for x in ("", ".index.json"))
    fp16 = any((unet / f"diffusion_pytorch_model.fp16.safetensors{x}").is_file() for x in ("", ".index.json"))
    return "fp16" if fp16 and not plain else None


def _load_diffusers_folder(folder: Path, arch: str, dtype: torch.dtype):
    index = folder / "model_index.json"
    class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    if class_name not in _ARCH_OF_CLASS:
        raise ValueError(
            f"{folder} holds a {class_name}; FaceSmith loads {' and '.join(_ARCH_OF_CLASS)} base models"
        )
    arch = _arch_matches(arch, _ARCH_OF_CLASS[class_name], f"diffusers folder {folder.name}")
    kwargs = _load_kwargs(arch, dtype)
    variant = _weights_variant(folder)
    if variant:
        kwargs["variant"] = variant
    pipe = _pipeline_class(arch).from_pretrained(str(folder), use_safetensors=True, **kwargs)
    return pipe, arch


def _load_single_file(path: Path, arch: str, dtype: torch.dtype, config) -> tuple[object, str, Path]:
    keys = safetensors_keys(path)  # only safetensors; reads the header only
    try:
        found = detect_arch_from_keys(keys)
    except ValueError as exc:
        raise ValueError(f"checkpoint {path.name}: {exc}") from None
    arch = _arch_matches(arch, found, f"checkpoint {path.name}")
    config_folder = find_config_folder(path, arch, config)
    log.info("FaceSmith: loading %s checkpoint %s with configs from %s", ARCH_LABELS[arch], path.name, config_folder)
    pipe = _pipeline_class(arch).from_single_file(str(path), config=str(config_folder), **_load_kwargs(arch, dtype))
    return pipe, arch, config_folder


def load_pipeline(
    source: str | os.PathLike,
    arch: str = "auto",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    config: str | os.PathLike | None = None,
) -> BasePipeline:
    """Load a base pipeline from a diffusers folder, a single-file ``.safetensors`` checkpoint, or a name
    (``"diffusers/<folder>"`` / ``"checkpoints/<file>"``, see ``list_base_models``).

    ``arch`` is ``"auto"`` (from model_index.json or the checkpoint's keys), ``"sd15"`` or ``"sdxl"`` (checked).
    ``config``: the config folder for a single-file checkpoint (else searched, see the module doc). The safety checker
    is off and the per-step progress bar is disabled (FaceSmith reports progress through ``core.progress``).
    """
    arch = _check_arch(arch)
    path = Path(source)
    if not path.exists():
        if str(source).partition("/")[0] not in BASE_MODEL_KINDS:
            raise FileNotFoundError(
                f"base model {str(source)!r} not found: it is neither an existing folder/file nor a name like "
                "'diffusers/<folder>' or 'checkpoints/<file>'"
            )
        path = resolve_base_model(str(source))
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    extra: dict = {}
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path} is a folder without model_index.json, so not a diffusers pipeline")
        pipe, arch = _load_diffusers_folder(path, arch, dt)
        name = path.name
    else:
        if path.suffix.lower() not in (".safetensors", ".sft"):
            raise ValueError(
                f"{path.name}: FaceSmith loads checkpoints only from .safetensors files (pickled .ckpt/.pt files can "
                "run code when loaded); convert it to safetensors first"
            )
        pipe, arch, extra["config_folder"] = _load_single_file(path, arch, dt, config)
        name = path.stem
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dev)
    fingerprint = compute_fingerprint(pipe, arch)
    log.info("FaceSmith: loaded %s %s on %s (%s), fingerprint %s", ARCH_LABELS[arch], name, dev, dtype_name(dt),
             fingerprint)
    return BasePipeline(pipe=pipe, arch=arch, name=name, source=path, device=dev, dtype=dt,
                        fingerprint=fingerprint, extra=extra)


def as_base_pipeline(pipe, name: str = "in-memory", source: Optional[Path] = None) -> BasePipeline:
    """Wrap a diffusers pipeline built in memory (tests, trainers) as a BasePipeline."""
    class_name = type(pipe).__name__
    if class_name not in _ARCH_OF_CLASS:
        raise ValueError(f"{class_name} is not a supported base pipeline ({', '.join(_ARCH_OF_CLASS)})")
    arch = _ARCH_OF_CLASS[class_name]
    pipe.set_progress_bar_config(disable=True)
    return BasePipeline(pipe=pipe, arch=arch, name=name, source=source or Path(name), device=pipe.device,
                        dtype=pipe.unet.dtype, fingerprint=compute_fingerprint(pipe, arch))
