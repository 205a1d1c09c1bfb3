"""insightface model packs: find a pack folder, say what a missing or partial one lacks, pick the onnxruntime
execution provider (with a CPU fallback that says why), and load ``insightface.app.FaceAnalysis`` over the folder.

A pack is a folder of ``.onnx`` files, ``<models>/insightface/models/<name>/`` (also accepted:
``<models>/insightface/<name>/``), the layout users already have for ``buffalo_l`` and ``antelopev2``. The built-in
``synthface`` pack (``assets/models/insightface/models/synthface``) holds the SynthFace detector and recognizer
exported for insightface. FaceAnalysis is always given the folder itself, so insightface never tries to download.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .. import paths

log = logging.getLogger("facesmith")

BUILTIN_PACK = "synthface"
# what a complete pack holds, for messages: (pack, detection file, recognition file)
KNOWN_PACKS = (
    ("buffalo_l", "det_10g.onnx", "w600k_r50.onnx"),
    ("antelopev2", "scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    (BUILTIN_PACK, "det_synthface.onnx", "rec_synthface.onnx"),
)
PROVIDERS = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "TensorRT": "TensorrtExecutionProvider",
    "ROCm": "ROCMExecutionProvider",
    "DirectML": "DmlExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "OpenVINO": "OpenVINOExecutionProvider",
}
PROVIDER_PACKAGES = {
    "CUDA": "onnxruntime-gpu (built for your CUDA version) in place of onnxruntime",
    "TensorRT": "onnxruntime-gpu with TensorRT libraries",
    "ROCm": "onnxruntime-rocm",
    "DirectML": "onnxruntime-directml (Windows)",
    "CoreML": "the macOS onnxruntime build",
    "OpenVINO": "onnxruntime-openvino",
}
INSIGHTFACE_INSTALL = ("pip install --no-deps insightface && pip install onnx onnxruntime opencv-python-headless "
                       "scikit-image scipy")


class PackError(FileNotFoundError):
    """An insightface pack is missing or lacks a model the caller needs; the message names files and folders."""


def insightface_available() -> bool:
    try:
        import insightface  # noqa: F401
        import onnxruntime  # noqa: F401
    except Exception:
        return False
    return True


def _expected_layout(name: str) -> str:
    roots = paths.user_roots("insightface")
    where = roots[0] / "models" / name
    examples = "; ".join(f"{p}: {d} + {r}" for p, d, r in KNOWN_PACKS)
    return (f"expected a folder {where} holding a face detection model (SCRFD/RetinaFace .onnx) and, to embed "
            f"faces, a recognition model (ArcFace .onnx), e.g. {examples}. FaceSmith never downloads packs: copy "
            f"the pack's .onnx files there")


def list_packs() -> list[str]:
    """Names of the pack folders found (the user's first, then the built-in ``synthface``)."""
    out = []
    for name in paths.list_models("insightface"):
        if name.lower().endswith(".onnx"):
            continue  # a loose model file is not a pack
        short = name[len("models/"):] if name.startswith("models/") else name
        if short not in out:
            out.append(short)
    return out


def user_packs() -> list[str]:
    """Packs other than the built-in SynthFace one."""
    return [p for p in list_packs() if p != BUILTIN_PACK]


def find_pack(name: str = BUILTIN_PACK) -> Path:
    """The folder of pack ``name`` (``<insightface>/models/<name>/`` or ``<insightface>/<name>/``)."""
    for candidate in (f"models/{name}", name):
        p = paths.find("insightface", candidate)
        if p is not None and p.is_dir():
            return p
    searched = ", ".join(str(r) for r in paths.search_roots("insightface"))
    raise PackError(f"insightface model pack {name!r} not found (searched models/{name} and {name} in {searched}); "
                    + _expected_layout(name))


def pack_args(folder: Path) -> dict:
    """FaceAnalysis arguments for a pack folder: an absolute ``name`` is used as is by every insightface version
    (newer ones take a folder, older ones ``os.path.join(root, "models", name)``, which yields ``name``)."""
    folder = Path(folder).resolve()
    root = folder.parent.parent if folder.parent.name == "models" else folder.parent
    return {"name": str(folder), "root": str(root)}


def resolve_provider(provider: str = "CPU") -> tuple[list[str], str | None]:
    """onnxruntime providers for ``provider`` (a key of :data:`PROVIDERS`, or a full provider name), CPU last, and
    a note when the requested one is not available here (then only the CPU is used)."""
    import onnxruntime

    full = PROVIDERS.get(provider, provider)
    if full not in PROVIDERS.values():
        raise ValueError(f"unknown execution provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    available = onnxruntime.get_available_providers()
    if full == "CPUExecutionProvider":
        return ["CPUExecutionProvider"], None
    if full not in available:
        short = next(k for k, v in PROVIDERS.items() if v == full)
        hint = PROVIDER_PACKAGES.get(short, "an onnxruntime build with it")
        note = (f"execution provider {short} is not available in this onnxruntime {onnxruntime.__version__} "
                f"(it offers {', '.join(available)}); insightface runs on the CPU. For {short} install {hint}.")
        return ["CPUExecutionProvider"], note
    return [full, "CPUExecutionProvider"], None


@dataclass
class LoadedPack:
    name: str
    folder: Path
    app: object                          # insightface.app.FaceAnalysis
    providers: list[str]                 # what the detector's session really uses
    files: dict = field(default_factory=dict)   # task -> onnx file name
    notes: list[str] = field(default_factory=list)

    @property
    def detector(self):
        return self.app.models.get("detection")

    @property
    def recognizer(self):
        return self.app.models.get("recognition")


def _session_providers(model) -> list[str]:
    session = getattr(model, "session", None)
    try:
        return list(session.get_providers())
    except Exception:
        return []


@lru_cache(maxsize=4)
def _load(folder: str, files: tuple, providers: tuple, det_size: int) -> tuple:
    """``(FaceAnalysis or None when no detector, providers used)``; ``files`` keys the cache to the folder's content."""
    import onnxruntime
    from insightface.app import FaceAnalysis

    onnxruntime.set_default_logger_severity(3)
    try:
        app = FaceAnalysis(**pack_args(Path(folder)), allowed_modules=["detection", "recognition"],
                           providers=list(providers))
    except AssertionError:  # insightface asserts that a detection model was found
        app = None
    if app is None:
        return None, []
    on_cpu = providers[0] == "CPUExecutionProvider"
    app.prepare(ctx_id=-1 if on_cpu else 0, det_size=(det_size, det_size))
    return app, _session_providers(app.models["detection"])


def load_pack(name: str = BUILTIN_PACK, provider: str = "CPU", need_recognition: bool = True,
              det_size: int = 640) -> LoadedPack:
    """FaceAnalysis (detection + recognition only) over pack ``name`` with ``provider``; raises :class:`PackError`
    naming the expected files when the folder is missing, holds no detector, or (``need_recognition``) no
    recognizer."""
    if not insightface_available():
        raise ImportError(f"insightface packs need insightface and onnxruntime: {INSIGHTFACE_INSTALL}")
    folder = find_pack(name)
    onnx_files = sorted(p.name for p in folder.glob("*.onnx"))
    if not onnx_files:
        raise PackError(f"insightface pack {name!r} at {folder} has no .onnx files; " + _expected_layout(name))
    providers, note = resolve_provider(provider)
    app, used = _load(str(folder), tuple(onnx_files), tuple(providers), int(det_size))
    if app is None:
        raise PackError(f"insightface pack {name!r} at {folder} has no face detection model among "
                        f"{', '.join(onnx_files)}; " + _expected_layout(name))
    files = {task: Path(getattr(m, "model_file", "") or "").name for task, m in app.models.items()}
    if need_recognition and "recognition" not in app.models:
        raise PackError(f"insightface pack {name!r} at {folder} has a detector ({files['detection']}) but no "
                        f"recognition model among {', '.join(onnx_files)}; " + _expected_layout(name))
    notes = [note] if note else []
    if providers[0] != "CPUExecutionProvider" and used and used[0] != providers[0]:
        notes.append(f"onnxruntime could not start {providers[0]} (its GPU libraries did not load); insightface "
                     f"runs on {used[0]}")
    for n in notes:
        log.warning("FaceSmith: %s", n)
    return LoadedPack(name, folder, app, used or providers, files, notes)


__all__ = ["BUILTIN_PACK", "INSIGHTFACE_INSTALL", "KNOWN_PACKS", "LoadedPack", "PROVIDERS", "PackError",
           "find_pack", "insightface_available", "list_packs", "load_pack", "pack_args", "resolve_provider",
           "user_packs"]
