"""The identity adapter on the diffusers side: its file, reference features, the mixed identity and the conditioner.

- ``IdentityAdapter``: the trained network (``adapter_net.py``) + its own face encoder (stored in the same file, so
  an adapter always embeds faces the way it was trained) + the class word's embedding + the base it was made for.
- ``reference_features``: face crops (ArcFace-aligned, the face pipeline's ``Faces.crops``) -> face embeddings and
  VAE patch features of the frozen base.
- ``Identity``: one person as the adapter sees them (word-vector offsets + context tokens), made from 1..N
  references in well under a second; a small safetensors file (Save/Load Identity) so a person is reused without
  the photos.
- ``IdentityConditioner``: the ``Conditioner`` (``core/generate.py``) that puts an identity into ``generate``: an
  identity token in the prompt (through ``Concept``) and the decoupled cross-attention on the UNet (``attached``),
  with weight, start/end and an optional region mask; several identities (two people) apply at once.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from ..concept.tokens import put_token
from ..formats import info_of, save_safetensors, weights_digest
from ..models import native_size
from ..vae_tokens import vae_tokens
from .adapter_net import (AdapterConfig, IdentityAdapterNet, cross_attention_layers, ip_attention, region_weights,
                          schedule_active)

log = logging.getLogger("facesmith")

FORMAT = "facesmith.identity_adapter.v1"
IDENTITY_FORMAT = "facesmith.identity.v1"
COMBINE_MODES = ("average", "norm average", "concat")
DEFAULT_TOKEN = "<identity>"
# Apply Identity's default weight, chosen on 24 VALIDATION identities for the shipped adapter with words on the shipped
# base (identity README): the strongest weight whose prompt adherence stays within 5 points of the base's
DEFAULT_WEIGHT = 0.5
CROP_SIZE = 112


class AdapterMismatch(ValueError):
    """An adapter or identity used with another base model or another adapter than the one it was made for."""


# -------------------------------------------------------------------------------------------------- features


def crops_to_bchw(crops) -> torch.Tensor:
    """Face crops as (N, 3, S, S) float in [0, 1]: from (N, S, S, 3) (ComfyUI / ``Faces.crops``) or (N, 3, S, S)."""
    x = torch.as_tensor(crops).float()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"face crops must be a batch of images, got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ValueError(f"face crops must have 3 channels, got shape {tuple(x.shape)}")
    return x.contiguous()


def synthface_crops(images: torch.Tensor) -> torch.Tensor:
    """Model-format renders (N, 3, H, W) in [-1, 1] of centred SynthFace faces -> ArcFace crops (N, 3, 112, 112)
    in [0, 1] by the canonical alignment (what the face pipeline gives for such images, without detection)."""
    from ..judges.align import align_batch

    return align_batch((images.float() + 1) / 2, None, CROP_SIZE).clamp(0, 1)


@torch.no_grad()
def patch_features(dp, crops: torch.Tensor, pool: int, batch: int = 128) -> torch.Tensor:
    """VAE-encoder patch tokens (``core/vae_tokens``) of face crops ((N, 3, S, S) in [0, 1]) at the pipeline's native
    size, pooled to ``pool x pool`` -> (N, pool*pool, C)."""
    size = native_size(dp)
    out = []
    for i in range(0, crops.shape[0], batch):
        x = F.interpolate(crops[i:i + batch].float(), size=(size, size), mode="area") * 2 - 1
        out.append(vae_tokens(dp, x, pool)[0])
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------- adapter


@dataclass
class IdentityAdapter:
    net: IdentityAdapterNet
    face_encoder: object                    # FaceEncoder
    class_embedding: torch.Tensor           # (n_id, text_dim)
    base_name: str
    base_fingerprint: str
    info: dict = field(default_factory=dict)

    @property
    def cfg(self) -> AdapterConfig:
        return self.net.cfg

    @property
    def adapter_id(self) -> str:
        """16 hex digits over the adapter's weights: identities record the adapter that made them."""
        return weights_digest(FORMAT, self.net.state_dict())

    def __repr__(self) -> str:
        return (f"IdentityAdapter(base={self.base_name}:{self.base_fingerprint}, {self.cfg.n_id} word vectors, "
                f"{self.cfg.n_ctx} context tokens, steps={self.info.get('steps')})")

    def check_base(self, pipe, what: str = "the identity adapter") -> None:
        from ..concept.concept import pipeline_identity

        name, fp = pipeline_identity(pipe)
        if fp != self.base_fingerprint:
            raise AdapterMismatch(f"{what} was trained for base {self.base_name!r} (fingerprint "
                                  f"{self.base_fingerprint}) but the pipeline is {name!r} ({fp}); load the base it "
                                  "was trained for, or train an adapter for this base")

    @torch.no_grad()
    def features(self, pipe, crops) -> tuple[torch.Tensor, torch.Tensor]:
        """(face embeddings (N, face_dim), patch tokens (N, T, patch_dim)) of face crops (any layout
        ``crops_to_bchw`` takes)."""
        dp = getattr(pipe, "pipe", pipe)
        x = crops_to_bchw(crops)
        return self.face_encoder.embed_aligned(x), patch_features(dp, x, self.cfg.patch_pool)

    @torch.no_grad()
    def identity(self, pipe, crops, combine: str = "average") -> "Identity":
        """The mixed identity of 1..N face crops of ONE person."""
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        self.check_base(pipe)
        return self.identity_from_features(*self.features(pipe, crops), combine)

    @torch.no_grad()
    def identity_from_features(self, face: torch.Tensor, patches: torch.Tensor, combine: str = "average") -> "Identity":
        """The mixed identity of 1..N references given as (face embeddings (N, face_dim), VAE patch tokens
        (N, T, patch_dim)): the diffusers VAE's (``features``) or a native ComfyUI VAE's."""
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        if face.shape[0] < 1:
            raise ValueError("no face crops to make an identity from")
        self.net.eval()
        if combine == "concat":
            offsets, ctx = self.net(face[:, None], patches[:, None])
            offsets, ctx = offsets.mean(0), ctx.reshape(-1, ctx.shape[-1])
        else:
            if combine == "norm average":
                m = face.mean(0)
                face = (m / m.norm().clamp_min(1e-12)).expand_as(face)
            offsets, ctx = self.net(face[None], patches[None])
            offsets, ctx = offsets[0], ctx[0]
        return Identity(offsets=offsets.float().cpu(), ctx=ctx.float().cpu(), adapter_id=self.adapter_id,
                        base_fingerprint=self.base_fingerprint, n_references=int(face.shape[0]), combine=combine)

    # ------------------------------------------------------------------------------------------------- files

    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"adapter.{k}": v for k, v in self.net.state_dict().items()}
        t.update(self.face_encoder.embedded_tensors())
        t["class_embedding"] = self.class_embedding
        return t

    def metadata(self) -> dict:
        return {"format": FORMAT, "method": "identity_adapter", "base_name": self.base_name,
                "base_fingerprint": self.base_fingerprint, "adapter_config": json.dumps(self.cfg.to_json()),
                **self.face_encoder.embedded_metadata(), "info": json.dumps(self.info, sort_keys=True)}

    def save(self, path, overwrite: bool = False) -> Path:
        return save_safetensors(path, {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v
                                       for k, v in self.state_tensors().items()}, self.metadata(), overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "IdentityAdapter":
        from ..formats import load_safetensors
        from .face_encoder import FaceEncoder

        path = Path(path)
        tensors, meta = load_safetensors(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a FaceSmith identity adapter (format {meta.get('format')!r}, expected "
                             f"{FORMAT!r})")
        try:
            cfg = AdapterConfig(**json.loads(meta["adapter_config"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable adapter metadata ({exc})") from None
        from ..weights_check import check_finite

        check_finite(path, tensors)
        net = IdentityAdapterNet(cfg)
        net.load_state_dict({k[len("adapter."):]: v.float() for k, v in tensors.items() if k.startswith("adapter.")})
        fe = FaceEncoder.from_embedded(tensors, meta, path)
        return cls(net=net.eval(), face_encoder=fe, class_embedding=tensors["class_embedding"].float(),
                   base_name=meta.get("base_name", "?"), base_fingerprint=meta.get("base_fingerprint", "?"),
                   info=info_of(meta))


def new_adapter(pipe, face_encoder, seed: int = 0, **cfg_kw) -> IdentityAdapter:
    """An untrained adapter for ``pipe`` (the training start): decoupled key/values from the text ones."""
    from ..concept.concept import pipeline_identity
    from ..concept.tokens import class_embedding

    dp = getattr(pipe, "pipe", pipe)
    layers = cross_attention_layers(dp.unet)
    probe = torch.zeros(1, 3, CROP_SIZE, CROP_SIZE)
    patch_dim = int(patch_features(dp, probe, cfg_kw.get("patch_pool", 4)).shape[-1])
    cfg = AdapterConfig(face_dim=face_encoder.dim, patch_dim=patch_dim,
                        text_dim=int(dp.text_encoder.get_input_embeddings().weight.shape[1]),
                        cross_dim=int(dp.unet.config.cross_attention_dim), layers=[p for p, _ in layers],
                        inner_dims=[int(a.to_k.weight.shape[0]) for _, a in layers], **cfg_kw)
    torch.manual_seed(seed)
    net = IdentityAdapterNet(cfg)
    net.init_kv_from(dp.unet)
    name, fp = pipeline_identity(pipe)
    return IdentityAdapter(net=net, face_encoder=face_encoder,
                           class_embedding=class_embedding(dp.tokenizer, dp.text_encoder, cfg.class_word, cfg.n_id),
                           base_name=name, base_fingerprint=fp, info={"method": "identity_adapter", "steps": 0})


# --------------------------------------------------------------------------------------------------- identity


@dataclass
class Identity:
    offsets: torch.Tensor          # (n_id, text_dim) word-vector offsets from the class word
    ctx: torch.Tensor              # (n_ctx * k, cross_dim) context tokens
    adapter_id: str
    base_fingerprint: str
    n_references: int = 1
    combine: str = "average"
    words: str = ""                                # who the person is in words ("olive skin, oval face, ...")
    word_vectors: Optional[torch.Tensor] = None    # (m, text_dim): the input embeddings of ", " + words

    def described(self, pipe, words: str) -> "Identity":
        """This identity with ``words`` folded in (e.g. ``understand.check.identity_words`` of the photo): the
        identity token then reads exactly as ``"<token>, words"`` (its vectors end with the words' vectors), in
        every prompt, on the native ComfyUI path and in a saved identity. The base draws what the words name; the
        adapter carries the rest (an adapter trained with ``identity_p`` > 0 learned exactly that)."""
        from ..concept.tokens import clean_words, word_vectors

        words = clean_words(words)
        if not words:
            return replace(self, words="", word_vectors=None)
        dp = getattr(pipe, "pipe", pipe)
        return self.with_word_vectors(words, word_vectors(dp.tokenizer, dp.text_encoder, words))

    def with_word_vectors(self, words: str, vectors: Optional[torch.Tensor]) -> "Identity":
        """This identity with ``words`` and their input embeddings ``vectors`` (m, text_dim) from any text encoder
        of the base (the diffusers one in :meth:`described`, ComfyUI's CLIP on the native path)."""
        return replace(self, words=words if vectors is not None else "",
                       word_vectors=None if vectors is None else vectors.detach().float().cpu())

    def save(self, path, overwrite: bool = False) -> Path:
        """The identity as a small safetensors file (no photo and no face embedding in it; its words if any)."""
        meta = {"format": IDENTITY_FORMAT, "adapter_id": self.adapter_id, "base_fingerprint": self.base_fingerprint,
                "n_references": str(self.n_references), "combine": self.combine}
        tensors = {"offsets": self.offsets.float().contiguous(), "ctx": self.ctx.float().contiguous()}
        if self.word_vectors is not None:
            tensors["word_vectors"] = self.word_vectors.float().contiguous()
            meta["words"] = self.words
        return save_safetensors(path, tensors, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "Identity":
        from ..formats import load_safetensors

        tensors, meta = load_safetensors(path)
        if meta.get("format") != IDENTITY_FORMAT or not {"offsets", "ctx"} <= set(tensors) <= {
                "offsets", "ctx", "word_vectors"}:
            raise ValueError(f"{path} is not a FaceSmith identity file (format {meta.get('format')!r})")
        vecs = tensors.get("word_vectors")
        return cls(offsets=tensors["offsets"].float(), ctx=tensors["ctx"].float(),
                   adapter_id=meta.get("adapter_id", "?"), base_fingerprint=meta.get("base_fingerprint", "?"),
                   n_references=int(meta.get("n_references", 1)), combine=meta.get("combine", "average"),
                   words=meta.get("words", "") if vecs is not None else "",
                   word_vectors=None if vecs is None else vecs.float())


# ------------------------------------------------------------------------------------ decoupled attention patch


@dataclass(eq=False)  # entries are told apart by identity (they hold tensors)
class AttentionEntry:
    """One identity's context on the UNet: ``ctx`` (1 or B rows, n, cross_dim); ``rows`` which batch rows it
    conditions (None = all; under classifier-free guidance the conditional half)."""

    net: IdentityAdapterNet
    ctx: torch.Tensor
    scale: float = 1.0
    start_at: float = 0.0
    end_at: float = 1.0
    mask: Optional[torch.Tensor] = None
    rows: Optional[torch.Tensor] = None


class AttentionState:
    def __init__(self, pipe=None):
        self.entries: list[AttentionEntry] = []
        self.timestep = 0.0
        self.latent_hw = (0, 0)
        self.pipe = pipe
        self.num_train_timesteps = 1000

    def contribution(self, index: int, attn, hidden: torch.Tensor) -> Optional[torch.Tensor]:
        from ..image_conditioning import text_pass

        branch = text_pass()
        if branch is False:  # an edit's branch without the text: the identity is text-side, like its token
            return None
        total = None
        query = None
        cfg_halves = branch is None and bool(getattr(self.pipe, "do_classifier_free_guidance", False)) \
            and hidden.shape[0] % 2 == 0
        for e in self.entries:
            if e.scale == 0 or not schedule_active(self.timestep, e.start_at, e.end_at, self.num_train_timesteps):
                continue
            if query is None:
                query = attn.to_q(hidden)
            rows = hidden.shape[0]
            ctx = e.ctx.to(query.device, query.dtype)
            k, v = e.net.ip_kv(index, ctx.float())
            k, v = k.to(query.dtype), v.to(query.dtype)
            if k.shape[0] == 1:
                k, v = k.expand(rows, -1, -1), v.expand(rows, -1, -1)
            out = ip_attention(query, k, v, attn.heads)
            out = F.linear(out, attn.to_out[0].weight) * (e.scale / attn.rescale_output_factor)
            w = region_weights(e.mask, out.shape[1], self.latent_hw)
            if w is not None:
                out = out * w.to(out.device, out.dtype)
            keep = e.rows
            if keep is None and cfg_halves and e.ctx.shape[0] == 1:
                keep = torch.arange(rows, device=out.device) >= rows // 2
            if keep is not None:
                out = out * keep.to(out.device, out.dtype).view(-1, 1, 1)
            total = out if total is None else total + out
        return total


class _Processor:
    """Wraps a cross-attention layer's own processor and adds the identity branch."""

    def __init__(self, base, index: int, state: AttentionState):
        self.base, self.index, self.state = base, index, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        extra = self.state.contribution(self.index, attn, hidden_states)
        return out if extra is None else out + extra


_STATE_ATTR = "_facesmith_identity_state"


@contextlib.contextmanager
def attached(unet, entry: AttentionEntry, pipe=None) -> Iterator[AttentionState]:
    """The decoupled cross-attention on ``unet`` with ``entry`` while the block runs. Several entries (several
    identities) share one patch; the last to leave restores the layers' own processors and removes the hook."""
    state: Optional[AttentionState] = getattr(unet, _STATE_ATTR, None)
    installed = state is None
    restore = []
    hook = None
    if installed:
        state = AttentionState(pipe)
        sched = getattr(pipe, "scheduler", None)
        state.num_train_timesteps = int(getattr(getattr(sched, "config", None), "num_train_timesteps", 1000) or 1000)
        for i, (name, attn) in enumerate(cross_attention_layers(unet)):
            if attn.residual_connection:
                raise ValueError(f"cross-attention layer {name} has a residual connection; not supported")
            restore.append((attn, attn.processor))
            attn.set_processor(_Processor(attn.processor, i, state))

        def pre_hook(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            state.timestep = float(torch.as_tensor(t).flatten()[0])
            state.latent_hw = tuple(sample.shape[-2:])

        hook = unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
        setattr(unet, _STATE_ATTR, state)
    state.entries.append(entry)
    try:
        yield state
    finally:
        state.entries.remove(entry)
        if installed:
            hook.remove()
            for attn, proc in restore:
                attn.set_processor(proc)
            delattr(unet, _STATE_ATTR)


# ---------------------------------------------------------------------------------------------- conditioner


class IdentityConditioner:
    """An identity in ``generate``: the token ``token`` in the prompt reads the identity's word vectors (class word
    + ``weight`` x offsets); the decoupled attention adds ``weight`` x the identity branch between ``start_at`` and
    ``end_at`` (fractions of the denoising), inside ``mask`` ((H, W) in [0, 1], image space) if given. A prompt
    without the token gets it in place of "a person" / "person" (else it is prepended)."""

    def __init__(self, adapter: IdentityAdapter, identity: Identity, token: str = DEFAULT_TOKEN, weight: float = 1.0,
                 start_at: float = 0.0, end_at: float = 1.0, mask: Optional[torch.Tensor] = None):
        from ..concept.concept import Concept

        if identity.adapter_id != adapter.adapter_id:
            raise AdapterMismatch(f"this identity was made by adapter {identity.adapter_id}, not by the loaded adapter "
                                  f"{adapter.adapter_id}; make it again from the photos with this adapter")
        if not 0.0 <= start_at <= end_at <= 1.0:
            raise ValueError(f"need 0 <= start_at <= end_at <= 1, got start_at={start_at}, end_at={end_at}")
        self.adapter, self.identity, self.weight = adapter, identity, float(weight)
        self.start_at, self.end_at = float(start_at), float(end_at)
        self.mask = None if mask is None else torch.as_tensor(mask).float()
        if self.mask is not None and self.mask.dim() != 2:
            raise ValueError(f"the identity mask must be one (H, W) mask, got shape {tuple(self.mask.shape)}")
        emb = adapter.class_embedding + self.weight * identity.offsets
        if identity.word_vectors is not None:  # the token reads "<token>, words"
            emb = torch.cat([emb, identity.word_vectors.to(emb.dtype)])
        self.concept = Concept(token=token, embedding=emb, base_name=adapter.base_name,
                               base_fingerprint=adapter.base_fingerprint, method="identity_adapter",
                               class_word=adapter.cfg.class_word, metadata={"adapter_id": adapter.adapter_id})

    @property
    def token(self) -> str:
        return self.concept.token

    def rewrite_prompt(self, prompt: str) -> str:
        if self.token not in prompt:
            prompt = put_token(prompt, self.token, self.adapter.cfg.class_word)
        return self.concept.rewrite_prompt(prompt)

    @contextlib.contextmanager
    def applied(self, pipe) -> Iterator[None]:
        self.adapter.check_base(pipe)
        dp = getattr(pipe, "pipe", pipe)
        self.adapter.net.to(next(dp.unet.parameters()).device)  # float32 wherever the UNet runs
        entry = AttentionEntry(net=self.adapter.net, ctx=self.identity.ctx[None], scale=self.weight,
                               start_at=self.start_at, end_at=self.end_at, mask=self.mask)
        with self.concept.applied(pipe), attached(dp.unet, entry, pipe=dp):
            yield
