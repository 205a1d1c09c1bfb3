"""The one module that finds models and the output folder, inside ComfyUI and standalone.

Layout (the same everywhere)::

    <models>/checkpoints/<name>.safetensors      single-file SD1.5 / SDXL checkpoints
    <models>/diffusers/<name>/model_index.json    diffusers pipeline folders
    <models>/loras/  <models>/embeddings/  <models>/clip_vision/
    <models>/insightface/<pack>/ or *.onnx        face analysis packs
    <models>/facesmith/                            FaceSmith's own trained encoders/adapters
    <models>/configs/<name>/model_index.json      diffusers config folders for single-file checkpoints

Search roots for a kind, in order:

1. the user's folders: inside ComfyUI ``folder_paths.get_folder_paths(kind)`` (so ``extra_model_paths.yaml`` works),
   once ``register_comfy_folders(folder_paths)`` was called; standalone ``<models>/<kind>/`` where ``<models>`` is
   ``set_models_dir(...)`` (the ``--models-dir`` option), else ``$FACESMITH_MODELS`` (read at call time), else
   ``./models``;
2. the built-in roots: ``<pack>/assets/models/<kind>/`` holds the tiny SynthFace models shipped with the pack.

Names are relative to their root, with ``/`` between folders (``"sd15/my.safetensors"``); a user's model shadows a
built-in one of the same name.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .formats import safe_join

log = logging.getLogger("facesmith")

PACK_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_MODELS_DIR = PACK_ROOT / "assets" / "models"
ENV_MODELS = "FACESMITH_MODELS"
ENV_OUTPUT = "FACESMITH_OUTPUT"


@dataclass(frozen=True)
class KindSpec:
    """What counts as a model of one kind: files with one of ``extensions`` and/or folders holding a marker file."""

    extensions: tuple[str, ...] = ()
    dir_markers: tuple[str, ...] = ()


KINDS: dict[str, KindSpec] = {
    "checkpoints": KindSpec(extensions=(".safetensors", ".sft")),
    "diffusers": KindSpec(dir_markers=("model_index.json",)),
    "loras": KindSpec(extensions=(".safetensors",)),
    "embeddings": KindSpec(extensions=(".safetensors",)),
    "clip_vision": KindSpec(extensions=(".safetensors",), dir_markers=("config.json",)),
    "insightface": KindSpec(extensions=(".onnx",), dir_markers=(".onnx",)),
    "facesmith": KindSpec(extensions=(".safetensors",)),
    "configs": KindSpec(dir_markers=("model_index.json",)),
}

_comfy_folder_paths = None  # ComfyUI's folder_paths module once registered
_models_dir_override: Optional[Path] = None
_builtin_roots: list[Path] = [BUILTIN_MODELS_DIR]


def register_kind(kind: str, extensions: tuple[str, ...] = (), dir_markers: tuple[str, ...] = ()) -> None:
    """Add a model kind (a folder under the models dir); also registered with ComfyUI if that is wired already.

    A ``dir_markers`` entry that starts with ``.`` means "a folder holding any file with that extension".
    """
    KINDS[kind] = KindSpec(tuple(e.lower() for e in extensions), tuple(dir_markers))
    if _comfy_folder_paths is not None:
        _register_comfy_kind(_comfy_folder_paths, kind)


def _spec(kind: str) -> KindSpec:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}") from None


# ---------------------------------------------------------------------------------------------------------- roots


def set_models_dir(path: str | os.PathLike | None) -> None:
    """Use ``path`` as the standalone models dir (the ``--models-dir`` option); ``None`` goes back to the default."""
    global _models_dir_override
    _models_dir_override = None if path is None else Path(path).expanduser()


def models_dir() -> Path:
    """The standalone models dir: ``set_models_dir`` > ``$FACESMITH_MODELS`` > ``./models`` (read at call time)."""
    if _models_dir_override is not None:
        return _models_dir_override
    env = os.environ.get(ENV_MODELS)
    return Path(env).expanduser() if env else Path.cwd() / "models"


def builtin_roots() -> list[Path]:
    """Folders with the built-in layout that are searched after the user's (``assets/models`` of the pack)."""
    return list(_builtin_roots)


def _register_comfy_kind(fp, kind: str) -> None:
    try:
        if fp.get_folder_paths(kind):
            return
    except Exception:  # KeyError in ComfyUI for an unknown folder name
        pass
    target = os.path.join(fp.models_dir, kind)
    fp.add_model_folder_path(kind, target)
    log.debug("FaceSmith: registered ComfyUI model folder %s -> %s", kind, target)


def register_comfy_folders(folder_paths_module) -> None:
    """Wire model lookup to ComfyUI's ``folder_paths`` (a duck-typed module object; this package never imports it).

    Registers every FaceSmith kind that ComfyUI does not know yet (``facesmith``, ``insightface``) under
    ``folder_paths.models_dir``. Pass ``None`` to go back to standalone lookup.
    """
    global _comfy_folder_paths
    _comfy_folder_paths = folder_paths_module
    if folder_paths_module is None:
        return
    for kind in KINDS:
        _register_comfy_kind(folder_paths_module, kind)


def comfy_folder_paths():
    """ComfyUI's folder_paths module if ``register_comfy_folders`` was called, else ``None``."""
    return _comfy_folder_paths


def user_roots(kind: str) -> list[Path]:
    """The user's folders for ``kind`` (ComfyUI's, or ``<models>/<kind>`` standalone), most important first."""
    _spec(kind)
    if _comfy_folder_paths is not None:
        try:
            return [Path(p) for p in _comfy_folder_paths.get_folder_paths(kind)]
        except Exception:
            return [Path(_comfy_folder_paths.models_dir) / kind]
    return [models_dir() / kind]


def search_roots(kind: str) -> list[Path]:
    """Every folder searched for ``kind``: the user's first, then the built-in ones."""
    roots = user_roots(kind) + [r / kind for r in _builtin_roots]
    seen, out = set(), []
    for r in roots:
        key = os.path.normcase(os.path.abspath(r))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def models_root(kind: str) -> Path:
    """The writable user folder for ``kind`` (where FaceSmith saves what it trains/exports); not created here."""
    return user_roots(kind)[0]


def output_dir() -> Path:
    """ComfyUI's output folder, or ``$FACESMITH_OUTPUT``, or ``./output`` standalone."""
    if _comfy_folder_paths is not None:
        return Path(_comfy_folder_paths.get_output_directory())
    env = os.environ.get(ENV_OUTPUT)
    return Path(env).expanduser() if env else Path.cwd() / "output"


# ------------------------------------------------------------------------------------------------ list / resolve


def _is_model_dir(path: Path, spec: KindSpec) -> bool:
    for marker in spec.dir_markers:
        if marker.startswith("."):
            try:
                if any(p.suffix.lower() == marker and p.is_file() for p in path.iterdir()):
                    return True
            except OSError:
                return False
        elif (path / marker).is_file():
            return True
    return False


def _is_model(path: Path, spec: KindSpec) -> bool:
    if path.is_file():
        return path.suffix.lower() in spec.extensions
    return path.is_dir() and _is_model_dir(path, spec)


def _scan(root: Path, spec: KindSpec) -> list[str]:
    """Names under ``root``: matching files at any depth and marked folders (not descended into)."""
    if not root.is_dir():
        return []
    names: list[str] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # symlink loop
            dirnames[:] = []
            continue
        visited.add(real)
        here = Path(dirpath)
        rel = here.relative_to(root)
        if spec.dir_markers and here != root and _is_model_dir(here, spec):
            names.append(rel.as_posix())
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in spec.extensions:
                names.append((rel / f).as_posix())
    return sorted(names, key=str.lower)


def list_models(kind: str) -> list[str]:
    """Names of the models of ``kind``: the user's (sorted), then built-in ones not shadowed by a user's."""
    spec = _spec(kind)
    out: list[str] = []
    seen: set[str] = set()
    for root in search_roots(kind):
        for name in _scan(root, spec):
            if name not in seen:
                seen.add(name)
                out.append(name)
    return out


def list_models_tagged(kind: str, key: str, value: str, prefix: str = "") -> list[str]:
    """``list_models(kind)`` names under ``prefix`` whose safetensors metadata has ``key == value`` (a file type);
    unreadable files are simply not offered."""
    from .formats import read_safetensors_metadata

    out = []
    for name in list_models(kind):
        if not name.startswith(prefix):
            continue
        path = find(kind, name)
        try:
            if path is not None and read_safetensors_metadata(path).get(key) == value:
                out.append(name)
        except Exception:  # unreadable or not safetensors
            continue
    return out


def find(kind: str, name: str) -> Optional[Path]:
    """The path of model ``name`` of ``kind`` (first root that has it), or ``None``. Rejects path traversal."""
    spec = _spec(kind)
    for root in search_roots(kind):
        candidate = safe_join(root, name)
        if _is_model(candidate, spec):
            return candidate
    return None


def resolve(kind: str, name: str) -> Path:
    """Like ``find`` but raises ``FileNotFoundError`` naming the kind, the name and every folder searched."""
    path = find(kind, name)
    if path is None:
        spec = _spec(kind)
        what = []
        if spec.extensions:
            what.append("a file ending in " + "/".join(spec.extensions))
        if spec.dir_markers:
            what.append("a folder containing " + " or ".join(
                f"a *{m} file" if m.startswith(".") else m for m in spec.dir_markers))
        roots = search_roots(kind)
        raise FileNotFoundError(
            f"{kind} model {name!r} not found: looked for {' or '.join(what)} named {name!r} in "
            + ", ".join(str(r) for r in roots)
            + f". Put it in {roots[0]}."
        )
    return path


HASH_LIMIT = 256 * 1024 * 1024  # files up to this size are hashed; larger ones are known by size + change time


def file_signature(*paths_: Optional[os.PathLike | str]) -> str:
    """A string that changes when any of ``paths_`` (files, or folders: every file inside) is written: SHA-256 of
    the content of files up to HASH_LIMIT, size + modification time of larger ones ("missing" for an absent path).
    For ComfyUI's ``IS_CHANGED``, so an overwritten model file is read again instead of served from the cache."""
    import hashlib

    digest = hashlib.sha256()
    for p in paths_:
        if p is None:
            digest.update(b"<none>")
            continue
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        digest.update(str(p).encode() + b"\0")
        for f in files:
            try:
                st = f.stat()
            except OSError:
                digest.update(b"missing\0")
                continue
            digest.update(f"{f.relative_to(p) if p.is_dir() else f.name}\0{st.st_size}\0".encode())
            if st.st_size <= HASH_LIMIT:
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
            else:
                digest.update(str(st.st_mtime_ns).encode())
    return digest.hexdigest()
