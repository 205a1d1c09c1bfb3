"""MIGE-style instruction-model training on the one training loop, base frozen.

One model is trained on any subset of the three tasks (``core/synthface/edits.py``): all three = the joint model,
one = a single-task model (the paper's comparison). Per row: the task's instruction with its images' word vectors at
the placeholders (``core/instruct/net.py``, from precomputed face embeddings and VAE tokens), the source latents as
extra UNet channels for edits (zeros for generation), and the exactly rendered target as the denoising target.

Classifier-free guidance on text and image separately (InstructPix2Pix's recipe): per row with probability
``drop_p`` each the instruction is dropped (empty caption, no image tokens), the source is dropped (zero channels),
or both.

Trainable: the fusion network, a peft LoRA on the UNet (``LORA_SUFFIXES``), the extra input channels' weights.

Options measured in the instruct README (each off by default, none used by the shipped files): an identity loss
(``id_weight``), identity words in subject generation instructions (``identity_p``), and a frozen identity adapter's
identity of image1 applied to subject generation rows as at use (``identity_adapter``, ``IdentityJoin``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.concept.diffusion import ParamHolder, caption_ids, frozen, sample_latents, scaling_factor, \
    training_scheduler
from ..core.concept.lora import trainable_lora
from ..core.concept.tokens import swapped_embedding, tokenizer_with, vector_tokens
from ..core.identity.adapter import attached
from ..core.image_conditioning import extra_input_channels
from ..core.instruct.instruction import parse
from ..core.instruct.model import TASKS, InstructModel, expanded_prompt, lora_targets, new_model, token_words
from ..core.instruct.net import image_vectors
from ..core.models import native_size
from ..core.progress import Progress, report
from ..core.training.loop import TrainResult, fit_steps, train
from ..core.vae_tokens import vae_tokens
from .settings import (check_continuation, check_whole_numbers, continuation_record, loop_config, plain_settings,
                       recipe_of_settings)

log = logging.getLogger("facesmith.train")

MAX_TRAIN_IMAGES = 2  # images per training instruction (subject edits name two)


@dataclass
class InstructPool:
    """Rendered samples and the frozen base's view of their images.

    Image table (every image any sample uses): face embeddings, VAE tokens, latent statistics. Sample table: task,
    indices of its images (``-1`` = none), of its source (``-1`` = none) and of its target, instruction text."""

    face: torch.Tensor        # (M, face_dim)
    tokens: torch.Tensor      # (M, grid*grid, vae_dim) float16
    stats: torch.Tensor       # (M, 2C, h, w) float32
    task: np.ndarray          # (S,) index into TASKS
    images: np.ndarray        # (S, MAX_TRAIN_IMAGES)
    source: np.ndarray        # (S,)
    target: np.ndarray        # (S,)
    instruction: list
    source_name: str = ""
    person: np.ndarray | None = None  # (S,) identity of each sample's target (the person of image1)
    patches: torch.Tensor | None = None  # (M, T, C) float16: face-crop patch tokens (identity adapter), if built

    def __len__(self) -> int:
        return len(self.instruction)


def render_samples(n_per_task: int, seed: int, size: int, split: str = "train", tasks=TASKS,
                   workers: int = 1) -> tuple[np.ndarray, list]:
    """(uint8 images (M, size, size, 3), samples) for ``n_per_task`` samples of each task over the split's
    identities. The samples are drawn first and their images rendered afterwards in ``workers`` processes (0 = one
    per CPU core); the pool does not depend on ``workers``."""
    from ..core.synthface.dataset import render_many
    from ..core.synthface.edits import instruct_sample
    from ..core.synthface.splits import identities

    ids = identities(split)
    jobs, samples = [], []

    def draw(identity, attrs, size, view=None) -> int:  # records the render job; its index stands for the image
        jobs.append((identity, attrs, view))
        return len(jobs) - 1

    for task in tasks:
        rng = np.random.default_rng([seed, 17, TASKS.index(task)])  # a task draws the same samples in any subset
        for _ in range(n_per_task):
            s = instruct_sample(task, rng, ids, size, draw=draw)
            idx = list(s["images"])
            samples.append({"task": TASKS.index(task), "images": idx + [-1] * (MAX_TRAIN_IMAGES - len(idx)),
                            "source": idx[0] if s["source"] is not None else -1,  # an edit's source is image1
                            "target": s["target"], "instruction": s["instruction"],
                            "person": int(jobs[s["target"]][0])})
    return render_many(jobs, size, workers), samples


@torch.no_grad()
def build_pool(pipe, face_encoder, images, samples: list, grid: int = 8, batch: int = 128,
               progress: Optional[Progress] = None, source_name: str = "", patch_pool: int = 0) -> InstructPool:
    """The pool of ``samples`` over their rendered ``images``; ``patch_pool`` > 0 also keeps each image's face-crop
    patch tokens at that pooling (what the identity adapter reads; training with ``--identity-adapter``)."""
    from ..core.concept.encoder import preprocess
    from ..core.identity.adapter import patch_features, synthface_crops

    dp = getattr(pipe, "pipe", pipe)
    size = native_size(dp)
    dev = next(dp.vae.parameters()).device
    arr = np.asarray(images)
    faces, toks, stats, patches = [], [], [], []
    for i in range(0, len(arr), batch):
        x = preprocess(arr[i:i + batch], size).to(dev)
        t, _ = vae_tokens(dp, x, grid)
        d = dp.vae.encode(x).latent_dist
        toks.append(t.half().cpu())
        stats.append(torch.cat([d.mean, d.std], 1).float().cpu())
        crops = synthface_crops(x)
        faces.append(face_encoder.embed_aligned(crops))
        if patch_pool > 0:
            patches.append(patch_features(dp, crops, patch_pool).half().cpu())
        report(progress, min(len(arr), i + batch), len(arr))
    return InstructPool(face=torch.cat(faces), tokens=torch.cat(toks), stats=torch.cat(stats),
                        task=np.array([s["task"] for s in samples], np.int64),
                        images=np.array([s["images"] for s in samples], np.int64),
                        source=np.array([s["source"] for s in samples], np.int64),
                        target=np.array([s["target"] for s in samples], np.int64),
                        instruction=[s["instruction"] for s in samples], source_name=source_name,
                        person=np.array([s["person"] for s in samples], np.int64),
                        patches=torch.cat(patches) if patches else None)


def save_pool(path, pool: InstructPool) -> None:
    from ..core.formats import save_safetensors

    save_safetensors(path, {"face": pool.face, "tokens": pool.tokens, "stats": pool.stats,
                            "task": torch.from_numpy(pool.task), "images": torch.from_numpy(pool.images),
                            "source": torch.from_numpy(pool.source), "target": torch.from_numpy(pool.target),
                            "person": torch.from_numpy(pool.person),
                            **({} if pool.patches is None else {"patches": pool.patches})},
                     {"instruction": json.dumps(pool.instruction), "source_name": pool.source_name}, overwrite=True)


def load_pool(path) -> InstructPool:
    from ..core.formats import load_safetensors

    t, meta = load_safetensors(path)
    return InstructPool(face=t["face"], tokens=t["tokens"], stats=t["stats"], task=t["task"].numpy(),
                        images=t["images"].numpy(), source=t["source"].numpy(), target=t["target"].numpy(),
                        instruction=json.loads(meta["instruction"]), source_name=meta.get("source_name", ""),
                        person=t["person"].numpy() if "person" in t else None, patches=t.get("patches"))


ADAPTER_TOKEN = "<fs-identity>"  # the identity token's words in training (any free word: only vectors are trained)


class IdentityJoin:
    """A frozen identity adapter applied, as Apply Identity applies it into Instruct Generate, to subject generation
    rows in training: image1's identity (adapter offsets at ``weight`` on the class word) as a token right after
    ``<image1>`` and its decoupled cross-attention at ``weight`` on the rows whose instruction is kept. So the
    instruction model learns to generate WITH the adapter (``train instruct --identity-adapter``)."""

    def __init__(self, adapter, pool: InstructPool, weight: float, face_encoder):
        if face_encoder.fingerprint != adapter.face_encoder.fingerprint:  # the pool's face embeddings are reused
            raise ValueError(f"the identity adapter embeds faces with face encoder {adapter.face_encoder.fingerprint}, "
                             f"the instruction model (and its pool) with {face_encoder.fingerprint}: use the same one")
        if pool.patches is None:
            raise ValueError("training with an identity adapter needs the pool's face-crop patch tokens, which this "
                             "pool lacks: build the pool again with them (another --pool-cache file)")
        if pool.patches.shape[1] != adapter.cfg.patch_pool ** 2:
            raise ValueError(f"the pool's patch tokens are pooled to {pool.patches.shape[1]} per crop, the adapter "
                             f"reads {adapter.cfg.patch_pool ** 2}: build the pool again for this adapter")
        self.adapter, self.weight = adapter, float(weight)
        self.words = vector_tokens(ADAPTER_TOKEN, adapter.cfg.n_id)

    def prompt(self, prompt: str) -> str:
        from ..core.concept.tokens import expand_prompt
        from ..core.instruct.model import with_tokens_after_image1

        return expand_prompt(with_tokens_after_image1(prompt, [ADAPTER_TOKEN]), ADAPTER_TOKEN, len(self.words))

    @torch.no_grad()
    def condition(self, pool: InstructPool, rows: np.ndarray, dev) -> tuple[torch.Tensor, torch.Tensor]:
        """(token vectors (B, n_id, D), context (B, n_ctx, cross_dim)) of each row's image1, one reference each."""
        first = torch.from_numpy(pool.images[rows][:, 0])
        net = self.adapter.net.to(dev).eval()
        offsets, ctx = net(pool.face[first].to(dev)[:, None], pool.patches[first].to(dev).float()[:, None])
        return self.adapter.class_embedding.to(dev)[None] + self.weight * offsets, ctx

    def entry(self, ctx: torch.Tensor, use: torch.Tensor):
        from ..core.identity.adapter import AttentionEntry

        return AttentionEntry(net=self.adapter.net, ctx=ctx, scale=self.weight, rows=use)


class InstructObjective:
    def __init__(self, dp, model: InstructModel, pool: InstructPool, lora_mods, source_weight: ParamHolder,
                 tasks=TASKS, batch_size: int = 32, drop_p: float = 0.05, seed: int = 0, id_weight: float = 0.0,
                 id_t_max: int = 600, id_rows_max: int = 8, identity_p: float = 0.0,
                 identity: Optional[IdentityJoin] = None):
        self.dp, self.model, self.pool = dp, model, pool
        self.identity = identity
        # subject generation rows name each visible identity trait of their person with probability identity_p
        # after <image1> (as the identity adapter trains), so words a face model reads can join the image at use
        self.identity_p = float(identity_p)
        if self.identity_p > 0 and pool.person is None:
            raise ValueError("identity words (identity_p > 0) need each sample's person, which a pool built by an "
                             "earlier version lacks: build the pool again (another --pool-cache file)")
        # the identity loss (IDAdapter's, on the model's own face encoder, never the judge): the face in the
        # decoded clean estimate of up to id_rows_max conditioned rows with t < id_t_max against the target's face
        self.id_weight, self.id_t_max, self.id_rows_max = float(id_weight), int(id_t_max), int(id_rows_max)
        self.lora_mods, self.source_weight = lora_mods, source_weight
        self.batch_size, self.drop_p, self.seed = int(batch_size), float(drop_p), int(seed)
        want = [TASKS.index(t) for t in tasks]
        self.rows = np.flatnonzero(np.isin(pool.task, want))
        if not len(self.rows):
            raise ValueError(f"the pool has no sample of the tasks {list(tasks)}")
        k = model.cfg.n_tokens
        extra = identity.words if identity is not None else []
        self.tok, self.start = tokenizer_with(dp.tokenizer, token_words(MAX_TRAIN_IMAGES, k) + extra)
        self.prompts = [self._expanded(text, task) for text, task in zip(pool.instruction, pool.task.tolist())]
        self.sched = training_scheduler(dp)
        self.sf = scaling_factor(dp.vae)

    def modules(self):
        return {"net": self.model.net, "lora": self.lora_mods, "source_weight": self.source_weight}

    def parameters(self):
        return list(self.model.net.parameters()) + list(self.lora_mods.parameters()) + \
            list(self.source_weight.parameters())

    def make_batch(self, step: int):
        rng = np.random.default_rng([self.seed, int(step)])  # a function of the step: exact resume
        rows = self.rows[rng.integers(0, len(self.rows), self.batch_size)]
        u = rng.random(self.batch_size)
        drop_text = (u < self.drop_p) | (u >= 1 - self.drop_p)          # text only, or both
        drop_src = (u >= self.drop_p) & (u < 2 * self.drop_p) | (u >= 1 - self.drop_p)  # source only, or both
        caps = ["" if d else self._prompt(r, rng) for r, d in zip(rows.tolist(), drop_text.tolist())]
        return {"rows": torch.from_numpy(rows), "ids": caption_ids(self.tok, caps),
                "drop_src": torch.from_numpy(drop_src), "drop_text": torch.from_numpy(drop_text), "step": int(step)}

    def _prompt(self, row: int, rng: np.random.Generator) -> str:
        if self.identity_p <= 0 or self.pool.task[row] != TASKS.index("subject_generation"):
            return self.prompts[row]
        from ..core.concept.tokens import with_words
        from ..core.synthface.captions import describe_identity, random_mention
        from ..core.synthface.render import identity_traits
        from .identity_adapter import VISIBLE_TRAITS

        said = random_mention(rng, self.identity_p, VISIBLE_TRAITS)
        words = describe_identity(identity_traits(int(self.pool.person[row])).facts(), said)
        return self._expanded(with_words(self.pool.instruction[row], words, "<image1>"), int(self.pool.task[row]))

    def _expanded(self, text: str, task: int) -> str:
        prompt = parse(text, _named(text)).prompt
        if self.identity is not None and task == TASKS.index("subject_generation"):
            prompt = self.identity.prompt(prompt)
        return expanded_prompt(prompt, MAX_TRAIN_IMAGES, self.model.cfg.n_tokens)

    def loss(self, batch, step):
        dp, pool, net = self.dp, self.pool, self.model.net
        dev = next(net.parameters()).device
        gen = torch.Generator("cpu").manual_seed(self.seed * 1_000_003 + int(batch["step"]))
        rows = batch["rows"].numpy()
        img = pool.images[rows]                                   # (B, 2)
        flat = np.where(img >= 0, img, pool.target[rows][:, None])  # padding rows read any image; unused
        b, n = img.shape
        face = pool.face[torch.from_numpy(flat.reshape(-1))].to(dev)
        toks = pool.tokens[torch.from_numpy(flat.reshape(-1))].to(dev).float()
        vec = image_vectors(net, self.model.class_embedding.to(dev), face, toks)   # (B*2, k, D)
        vec = vec.reshape(b, n * vec.shape[1], vec.shape[2])
        adapter_on = contextlib.nullcontext()
        if self.identity is not None:  # subject generation rows whose instruction is kept
            use = torch.from_numpy(pool.task[rows] == TASKS.index("subject_generation")) & ~batch["drop_text"]
            id_vec, ctx = self.identity.condition(pool, rows, dev)
            vec = torch.cat([vec, id_vec.to(vec.dtype)], 1)
            adapter_on = attached(dp.unet, self.identity.entry(ctx, use.to(dev)))
        te = dp.text_encoder
        with swapped_embedding(te, self.start, vec):
            text = te(batch["ids"].to(dev))[0]
        lat = sample_latents(pool.stats[torch.from_numpy(pool.target[rows])], self.sf, gen).to(dev)
        src_idx = pool.source[rows]
        has_src = torch.from_numpy(src_idx >= 0) & ~batch["drop_src"]
        src_stats = pool.stats[torch.from_numpy(np.where(src_idx >= 0, src_idx, 0))]
        src = (src_stats[:, :src_stats.shape[1] // 2] * self.sf * has_src.view(-1, 1, 1, 1)).to(dev)
        noise = torch.randn(lat.shape, generator=gen).to(dev)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (b,), generator=gen).to(dev)
        noisy = self.sched.add_noise(lat, noise, t)
        with extra_input_channels(dp.unet, self.source_weight.value), adapter_on:
            pred = dp.unet(torch.cat([noisy, src], 1), t, encoder_hidden_states=text).sample
        kind = self.sched.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.sched.get_velocity(lat, noise, t)
        else:
            raise ValueError(f"instruction training supports epsilon and v-prediction bases, not {kind!r}")
        per_row = F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3))
        logs = {"denoise": float(per_row.mean().detach())}
        task = torch.from_numpy(pool.task[rows])
        for i, name in enumerate(TASKS):
            m = task == i
            if bool(m.any()):
                logs[name] = float(per_row[m.to(per_row.device)].mean().detach())
        loss = per_row.mean()
        if self.id_weight > 0:
            id_loss = self._identity_loss(noisy, pred, t, rows, ~batch["drop_text"].to(dev) & (t < self.id_t_max))
            if id_loss is not None:
                loss = loss + self.id_weight * id_loss
                logs["id"] = float(id_loss.detach())
        return loss, logs

    def _identity_loss(self, noisy, pred, t, rows, use):
        """1 - cosine between the face encoder's embedding of the decoded clean estimate and the target render's
        (every task's target is the person of image1), over at most ``id_rows_max`` rows of ``use``."""
        from .identity_adapter import clean_estimate

        idx = torch.nonzero(use).flatten()[:self.id_rows_max]
        if not len(idx):
            return None
        x0 = clean_estimate(self.sched, noisy[idx], pred[idx], t[idx])
        img = self.dp.vae.decode(x0 / self.sf).sample.clamp(-1, 1)
        got = self.model.face_encoder.embed_images(img)
        want = F.normalize(self.pool.face[torch.from_numpy(self.pool.target[rows[idx.cpu().numpy()]])].to(got.device),
                           dim=-1)
        return (1 - (got * want).sum(-1)).mean()


def _named(text: str) -> list[int]:
    from ..core.instruct.instruction import placeholders

    return placeholders(text)


@dataclass
class InstructTrainSettings:
    tasks: tuple = TASKS
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    drop_p: float = 0.05
    n_tokens: int = 4
    grid: int = 8
    lora_rank: int = 16
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 50
    warmup_steps: int = 50
    lr_schedule: str = "cosine"
    seconds: float = 0.0
    init_from: Optional[str] = None  # an earlier instruction model file to continue (fresh schedule, same shape)
    rebase: bool = False     # init_from was trained on another base of the same shape: continue it on this one
    id_weight: float = 0.0   # > 0: add the identity loss (InstructObjective) with this weight
    id_t_max: int = 600
    identity_p: float = 0.0  # > 0: subject generation instructions name the person's visible traits (InstructObjective)
    identity_adapter: Optional[str] = None  # an identity adapter file applied to subject generation rows (IdentityJoin)
    identity_weight: float = 0.5            # its weight there (Apply Identity's default)

    def check(self) -> None:
        check_whole_numbers(self, ("steps", "batch_size", "n_tokens", "grid", "lora_rank"))
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(self.tasks)}")
        if not 0 <= self.drop_p < 1 / 3:
            raise ValueError(f"drop_p must be in [0, 1/3), got {self.drop_p}")
        if not 0 <= self.identity_p <= 1:
            raise ValueError(f"identity_p must be in [0, 1], got {self.identity_p}")
        if not self.id_weight >= 0:
            raise ValueError(f"id_weight must be >= 0, got {self.id_weight}")
        if self.identity_adapter and not 0 < self.identity_weight <= 2:
            raise ValueError(f"identity_weight must be in (0, 2], got {self.identity_weight}")
        if self.rebase and not self.init_from:
            raise ValueError("rebase continues an earlier model on this base: it needs init_from")


def train_instruct(pipe, face_encoder, pool: InstructPool, settings: InstructTrainSettings,
                   work_dir: Optional[str] = None, resume: bool = True,
                   progress: Optional[Progress] = None) -> tuple[InstructModel, TrainResult]:
    """Train an instruction model on ``pool`` (resumable from ``work_dir``); the base is left as it was."""
    settings.check()
    dp = getattr(pipe, "pipe", pipe)
    t0 = time.time()
    settings = replace(settings, tasks=tuple(settings.tasks))
    model = new_model(pipe, face_encoder, seed=settings.seed, n_tokens=settings.n_tokens, grid=settings.grid,
                      lora_rank=settings.lora_rank, lora_alpha=float(settings.lora_rank))
    targets = lora_targets(dp.unet)
    rank, alpha = model.cfg.lora_rank, model.cfg.lora_alpha
    earlier = start_from(model, settings.init_from, settings.rebase) if settings.init_from else None
    lora_init = earlier.lora if earlier is not None else None
    join = None
    if settings.identity_adapter:
        from ..core.identity.adapter import IdentityAdapter

        adapter = IdentityAdapter.load(settings.identity_adapter)
        adapter.check_base(pipe, f"the identity adapter {settings.identity_adapter}")
        join = IdentityJoin(adapter, pool, settings.identity_weight, face_encoder)

    def objective(m: InstructModel, mods):
        return InstructObjective(dp, m, pool, mods, ParamHolder(m.source_weight), settings.tasks,
                                 settings.batch_size, settings.drop_p, settings.seed, settings.id_weight,
                                 settings.id_t_max, identity_p=settings.identity_p, identity=join)

    frozen_nets = (dp.unet, dp.text_encoder, dp.vae, face_encoder.net) + ((join.adapter.net,) if join else ())
    with frozen(*frozen_nets):
        if settings.seconds > 0:
            with trainable_lora(dp.unet, rank, alpha, init=lora_init, targets=targets) as probe_mods:
                probe = new_model(pipe, face_encoder, seed=settings.seed, n_tokens=settings.n_tokens,
                                  grid=settings.grid, lora_rank=rank, lora_alpha=alpha)
                steps = fit_steps(lambda: objective(probe, probe_mods), loop_config(settings), settings.seconds)
            settings = replace(settings, steps=steps, seconds=0.0)
            log.info("instruction model: %d steps fit the time budget here", steps)
        recipe = recipe_of_settings(settings)
        recipe.update(base_fingerprint=model.base_fingerprint, face_encoder=face_encoder.fingerprint,
                      pool_rows=len(pool), pool_source=pool.source_name)
        with trainable_lora(dp.unet, rank, alpha, init=lora_init, targets=targets) as mods:
            obj = objective(model, mods)
            result = train(obj, loop_config(settings, work_dir, resume, recipe), progress)
            model.lora = mods.weights()
            model.source_weight = obj.source_weight.value.detach().float().cpu().clone()
    model.net.cpu().float().eval()
    tail = result.loss_history[-100:]
    model.info = {"method": "instruct", "tasks": list(settings.tasks), "steps": result.steps_done,
                  "hyper_parameters": plain_settings(settings),
                  "pool_rows": len(pool), "pool_source": pool.source_name, "resumed_from": result.resumed_from,
                  "final_loss": float(np.mean(tail)) if tail else None, "seconds": round(time.time() - t0, 1),
                  "face_encoder": face_encoder.fingerprint}
    if join is not None:  # Instruct Generate should get this adapter's identity of image1 (Apply Identity)
        model.info["trained_with_identity"] = {"adapter_id": join.adapter.adapter_id, "weight": join.weight}
    if earlier is not None:
        model.info["continues"] = continuation_record(earlier, settings.init_from)
    return model, result


def start_from(model: InstructModel, path: str, rebase: bool = False) -> InstructModel:
    """Copy an earlier instruction model's trained weights (fusion network, source channels) into ``model`` and
    return it (its LoRA starts the new run); refused unless it has this run's shape, base (unless ``rebase``) and
    face encoder."""
    earlier = InstructModel.load(path)
    check_continuation(earlier, model, path, rebase=rebase)
    model.net.load_state_dict(earlier.net.state_dict())
    model.source_weight = earlier.source_weight.detach().float().clone()
    return earlier
