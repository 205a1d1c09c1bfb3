"""The one writer: atomic file writes, "never overwrite unless asked", safe path joins and safetensors with metadata.

Every file FaceSmith writes (images, models, embeddings, reports) goes through ``atomic_path``/``atomic_write_*`` so a
crash or an interrupt never leaves a half-written file under the final name, and an existing file is only replaced
when the caller passed ``overwrite=True``. Weights are read only from safetensors.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping

__all__ = [
    "OverwriteRefused",
    "safe_join",
    "check_new_file",
    "ensure_folder",
    "next_free_path",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_safetensors",
    "load_safetensors",
    "read_safetensors_metadata",
    "safetensors_keys",
]

_DRIVE = re.compile(r"^[A-Za-z]:")
MAX_NAME_BYTES = 255  # one path component on common file systems


def safe_join(root: str | os.PathLike, name: str) -> Path:
    """``root / name`` where ``name`` is a relative name from a user or a workflow (``"sub/model.safetensors"``).

    Rejects anything that could leave ``root``: absolute paths, drive letters, ``..`` parts, backslashes, NUL bytes
    and empty names. The check is on the name itself, so folders the user symlinked into ``root`` keep working.
    """
    if not isinstance(name, str):
        raise TypeError(f"file name must be a string, got {type(name).__name__}")
    if not name or not name.strip():
        raise ValueError("file name is empty")
    if "\x00" in name:
        raise ValueError(f"file name {name!r} contains a NUL byte")
    if "\\" in name:
        raise ValueError(f"file name {name!r} contains a backslash; use '/' between folders")
    if name.startswith("/") or _DRIVE.match(name):
        raise ValueError(f"file name {name!r} must be relative to {root}, not absolute")
    parts = PurePosixPath(name).parts
    if any(p == ".." for p in parts):
        raise ValueError(f"file name {name!r} must not contain '..' (it would leave {root})")
    parts = [p for p in parts if p != "."]
    if not parts:
        raise ValueError(f"file name {name!r} names no file")
    for p in parts:
        if len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ValueError(f"file name part {p[:40]!r}... is longer than {MAX_NAME_BYTES} bytes (the file system "
                             "limit)")
    return Path(root).joinpath(*parts)


class OverwriteRefused(FileExistsError):
    """``path`` exists and replacing it was not asked for. ``str()`` tells a Python caller what to pass; a command
    line or a node tells its user with ``with_hint`` (``"add --overwrite to replace it"``)."""

    PYTHON_HINT = "pass overwrite=True to replace it"

    def __init__(self, path: str | os.PathLike, context: str = "", hint: str | None = None):
        self.path = Path(path)
        self.context = context
        super().__init__(self.with_hint(hint or self.PYTHON_HINT))

    def with_hint(self, hint: str) -> str:
        return f"{self.context}{self.path} already exists; refusing to overwrite it ({hint})"


def check_new_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise ``OverwriteRefused`` (a ``FileExistsError``) if ``path`` exists and ``overwrite`` is False; return it as
    a Path."""
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise OverwriteRefused(path)
    return path


def ensure_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create folder ``path`` (and its parents) if needed; a file in its place, a folder that cannot be created or
    one that cannot be written to raise an ``OSError`` whose message names ``what`` and the path."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path} is not writable")
    return path


def next_free_path(path: str | os.PathLike, digits: int = 5) -> Path:
    """``path`` if it does not exist, else ``stem_00001.ext``, ``stem_00002.ext``, ... (the first that is free)."""
    path = Path(path)
    if not os.path.lexists(path):
        return path
    suffix = "".join(path.suffixes[-1:])
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    i = 1
    while True:
        candidate = path.with_name(f"{stem}_{i:0{digits}d}{suffix}")
        if not os.path.lexists(candidate):
            return candidate
        i += 1


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    # os.umask can only be read by setting it; do that once, at import, not while other threads create files
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move the finished temporary file to its final name; without ``overwrite`` never replace an existing file."""
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # atomic and fails if ``final`` appeared meanwhile
    except FileExistsError:
        raise OverwriteRefused(final) from None
    except OSError:
        # file systems without hard links (FAT, some network shares): check, then rename
        check_new_file(final, overwrite=False)
        os.replace(tmp, final)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it becomes ``path`` atomically.

    The parent folder is created. On error (or ``Interrupted``) the temporary file is removed and ``path`` is
    untouched. Without ``overwrite`` an existing ``path`` raises ``FileExistsError`` before any work is done.
    """
    final = check_new_file(path, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        yield tmp
        # mkstemp makes 0600 (and writers such as safetensors may recreate the file): give the final file the
        # usual permissions just before publishing it
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _publish(tmp, final, overwrite)
        _fsync_dir(final.parent)
    finally:
        # on every path: success (already published), a failed write (full disk), a failed publish, an interrupt;
        # a failure to remove must not hide the error that got us here
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; see ``atomic_path``."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; see ``atomic_path``."""
    return atomic_write_bytes(path, text.encode(encoding), overwrite)


def _metadata_strings(metadata: Mapping | None) -> dict[str, str] | None:
    if not metadata:
        return None
    out = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"safetensors metadata keys must be strings, got {key!r}")
        out[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


def save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, "torch.Tensor"],  # noqa: F821
    metadata: Mapping | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``tensors`` (moved to CPU, made contiguous, shared storage split) with ``metadata`` atomically.

    Metadata values that are not strings are stored as JSON text (safetensors metadata is ``str -> str``); read them
    back with ``json.loads``.
    """
    from safetensors.torch import save_file

    if not tensors:
        raise ValueError(f"refusing to write {path}: no tensors given")
    clean = {}
    for key, t in tensors.items():
        if not isinstance(key, str):
            raise TypeError(f"tensor names must be strings, got {key!r}")
        clean[key] = t.detach().to("cpu").contiguous().clone()
    with atomic_path(path, overwrite) as tmp:
        save_file(clean, str(tmp), metadata=_metadata_strings(metadata))
    return Path(path)


def _check_safetensors_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise ValueError(
            f"{path}: FaceSmith loads weights only from .safetensors files (pickled .ckpt/.pt/.bin files can run "
            "code when loaded); convert it to safetensors first"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict[str, str]]:
    """Return ``(tensors, metadata)`` from a safetensors file."""
    from safetensors import safe_open

    path = _check_safetensors_path(path)
    with _naming_file(path):
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, metadata


@contextlib.contextmanager
def _naming_file(path: Path) -> Iterator[None]:
    """The safetensors library's errors ("header too large", "incomplete metadata") do not say which file: add it."""
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError" and not isinstance(exc, OSError):
            raise
        raise ValueError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``str -> str`` metadata of a safetensors file, reading only its header."""
    from safetensors import safe_open

    path = _check_safetensors_path(path)
    with _naming_file(path), safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def safetensors_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names in a safetensors file, reading only its header."""
    from safetensors import safe_open

    path = _check_safetensors_path(path)
    with _naming_file(path), safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def weights_digest(kind: str, state: Mapping[str, "torch.Tensor"]) -> str:  # noqa: F821
    """16 hex digits over ``kind`` and the tensors (sorted by key, rounded to float16): how a file records which
    weights (face encoder, adapter, model) it was made with."""
    import hashlib

    import torch

    h = hashlib.sha256(kind.encode())
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def info_of(metadata: Mapping[str, str]) -> dict:
    """A model file's ``info`` metadata (training record) as a dict; ``{}`` when absent or unreadable."""
    try:
        info = json.loads(metadata.get("info", "{}"))
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}
