"""The identity adapter's own face recognizer (trained by ``trainers/face_encoder.py``; NOT the evaluation judge).

Two uses: the face feature the adapter maps into conditioning, and the differentiable identity loss during adapter
training (``embed_images`` keeps the graph: canonical SynthFace alignment is a bilinear warp). Same network family
as the judge (``RecognizerNet``), another architecture and seed, another training pool.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import paths

KIND = "facesmith.identity.face_encoder"
FILE_NAME = "face-encoder.safetensors"
SUBDIR = "identity"
ARCH = {"dim": 96, "widths": [16, 32, 64, 128], "blocks": [1, 1, 2, 1], "input_size": 112}
BUILTIN_PATH = paths.BUILTIN_MODELS_DIR / "facesmith" / SUBDIR / FILE_NAME


def default_path() -> Path:
    found = paths.find("facesmith", f"{SUBDIR}/{FILE_NAME}")
    return found if found is not None else BUILTIN_PATH


class FaceEncoder:
    """A loaded face encoder: ``embed_images`` (model-format images) and ``embed_aligned`` (112 px arcface crops)."""

    def __init__(self, net, threshold: float, metadata: dict, path: Path | None, arch: dict | None = None):
        self.net = net.eval()
        self.arch = dict(arch or ARCH)  # what rebuilds ``net`` (stored with an adapter that embeds this encoder)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.threshold = float(threshold)
        self.metadata = metadata
        self.path = path

    @classmethod
    def load(cls, path=None, device="cpu") -> "FaceEncoder":
        from ..judges.common import load_judge_net
        from ..judges.nets import RecognizerNet

        path = Path(path) if path is not None else default_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"the identity adapter's face encoder {path} does not exist; build it with `facesmith train "
                f"face-encoder --out {path}` (or put {FILE_NAME} under models/facesmith/{SUBDIR}/)")
        net, arch, meta, path = load_judge_net(
            path, FILE_NAME, KIND, device=str(device),
            build=lambda a: RecognizerNet(a["dim"], tuple(a["widths"]), tuple(a["blocks"]), input_size=a["input_size"]))
        return cls(net, float(meta.get("threshold", 0.5)), meta, path, arch)

    @property
    def dim(self) -> int:
        return int(self.net.fc.out_features)

    @property
    def fingerprint(self) -> str:
        """16 hex digits over the weights: an adapter records which face encoder it was trained with."""
        from ..formats import weights_digest

        return weights_digest(KIND, self.net.state_dict())

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` model-format images in [-1, 1] of centred SynthFace faces -> ``(N, dim)`` unit vectors.
        Differentiable in ``x`` (the network's own weights are frozen)."""
        from ..judges.align import align_batch

        aligned = align_batch((x.float() + 1) / 2, None, 112) * 2 - 1
        dev = next(self.net.parameters()).device
        return self.net(aligned.to(dev))

    @torch.no_grad()
    def embed_aligned(self, crops: torch.Tensor) -> torch.Tensor:
        """Arcface-aligned crops in [0, 1], ``(N, S, S, 3)`` (the face pipeline's ``Faces.crops``) or
        ``(N, 3, S, S)`` -> ``(N, dim)``."""
        from ..judges.align import resize

        x = crops.float()
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        x = resize(x.contiguous(), 112) * 2 - 1
        dev = next(self.net.parameters()).device
        return self.net(x.to(dev)).float().cpu()

    # -------------------------------------------------------------- stored inside another model's file

    EMBEDDED_PREFIX = "face_encoder."

    def embedded_tensors(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under ``face_encoder.`` keys, for a model file that carries its own encoder."""
        return {f"{self.EMBEDDED_PREFIX}{k}": v for k, v in self.net.state_dict().items()}

    def embedded_metadata(self) -> dict[str, str]:
        import json

        return {"face_encoder_arch": json.dumps(self.arch), "face_encoder_threshold": str(self.threshold)}

    @classmethod
    def from_embedded(cls, tensors: dict, meta: dict, path=None) -> "FaceEncoder":
        """The encoder stored by ``embedded_tensors`` / ``embedded_metadata`` in a model file."""
        import json

        from ..judges.nets import RecognizerNet

        try:
            arch = json.loads(meta["face_encoder_arch"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable face encoder metadata ({exc})") from None
        net = RecognizerNet(arch["dim"], tuple(arch["widths"]), tuple(arch["blocks"]), input_size=arch["input_size"])
        n = len(cls.EMBEDDED_PREFIX)
        net.load_state_dict({k[n:]: v.float() for k, v in tensors.items() if k.startswith(cls.EMBEDDED_PREFIX)})
        return cls(net, float(meta.get("face_encoder_threshold", 0.5)), {}, path, arch)
