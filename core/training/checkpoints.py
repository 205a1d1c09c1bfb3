"""Finding and reading the training loop's checkpoints, trusting none of them.

A work dir holds ``checkpoint-<step>/`` folders (``state.json``, ``trainable.safetensors``, ``optimizer.pt`` and,
with EMA, ``ema.safetensors``), written by the loop as a temporary folder renamed into place. Disks fill up, machines
lose power and people copy folders around, so a checkpoint is read completely and checked before anything is applied
to the model: the newest complete one wins, and every folder that was passed over is reported with the reason
(truncated file, broken JSON, a stray ``checkpoint-old/`` ...). When checkpoints exist but none is complete, resuming
fails with their paths instead of silently starting over.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("facesmith.train")

_NAME = re.compile(r"^checkpoint-(\d+)$")
START_FRESH_HINT = "start fresh with --no-resume (node: turn 'resume' off) or remove them"


class CorruptCheckpoint(ValueError):
    """A checkpoint folder that cannot be resumed from; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class NoCompleteCheckpoint(RuntimeError):
    """Checkpoints exist in the work dir but none of them can be resumed from."""


class RecipeMismatch(ValueError):
    """The newest checkpoint was made with settings that shape training differently from this run's."""

    def __init__(self, path: Path, differences: list[str]):
        super().__init__(f"{path} was made with other training settings than this run ({'; '.join(differences)}); "
                         f"resuming would mix two runs: {START_FRESH_HINT}, or use another work dir")
        self.path, self.differences = path, differences


# The loop's own settings that shape the weights (``steps`` is not one: a finished run continues with more steps).
LOOP_RECIPE = ("learning_rate", "weight_decay", "max_grad_norm", "seed", "precision", "ema_decay", "warmup_steps",
               "lr_schedule")


def recipe_of(config) -> dict:
    """What a checkpoint records of ``config`` (a TrainConfig): the loop's shaping settings plus the objective's
    ``config.recipe``, normalised through JSON (what state.json holds)."""
    recipe = {k: getattr(config, k) for k in LOOP_RECIPE}
    overlap = set(recipe) & set(config.recipe)
    if overlap:
        raise ValueError(f"TrainConfig.recipe repeats loop settings {sorted(overlap)}; leave them to the loop")
    recipe.update(config.recipe)
    return json.loads(json.dumps(recipe, sort_keys=True, default=str))


def recipe_differences(saved: dict, now: dict) -> list[str]:
    """``name: <saved> in the checkpoint, <now> now`` for every setting that differs (a missing one counts)."""
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k, "(not set)"), now.get(k, "(not set)")
        if a != b:
            out.append(f"{k}: {json.dumps(a)} in the checkpoint, {json.dumps(b)} now")
    return out


def check_resumable(ckpt: Checkpoint, config) -> None:
    """Refuse to resume ``ckpt`` under ``config`` when a shaping setting differs or the checkpoint is past the run's
    last step. Checkpoints written before recipes were recorded are checked on the loop settings they kept."""
    now = recipe_of(config)
    saved = ckpt.state.get("recipe")
    if saved is None:  # an older checkpoint: only its TrainConfig was kept
        old = ckpt.state.get("config") or {}
        saved = {k: old[k] for k in LOOP_RECIPE if k in old}
        now = {k: now[k] for k in saved}
        log.warning("%s records no training recipe (an older FaceSmith); only the loop settings were compared",
                    ckpt.path)
    problems = recipe_differences(saved, now)
    if ckpt.step > config.steps:
        problems.append(f"the checkpoint is at step {ckpt.step}, past this run's {config.steps} steps")
    if problems:
        raise RecipeMismatch(ckpt.path, problems)


@dataclass
class Checkpoint:
    """A checkpoint read completely into memory (nothing applied yet)."""

    path: Path
    step: int
    state: dict
    trainable: dict
    optimizer: dict
    ema: dict | None = None
    skipped: list = field(default_factory=list)  # [(path, reason)] of newer folders passed over


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` name, or None for any other name."""
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def candidates(work_dir: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(``checkpoint-<step>`` folders newest first, [(path, reason)] of ``checkpoint-*`` entries that are not)."""
    found, stray = [], []
    for p in Path(work_dir).glob("checkpoint-*"):
        if checkpoint_step(p) is None:
            stray.append((p, "not a checkpoint-<step> folder (ignored)"))
        elif not p.is_dir():
            stray.append((p, "not a folder (ignored)"))
        else:
            found.append(p)
    found.sort(key=checkpoint_step, reverse=True)
    return found, sorted(stray)


def _safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CorruptCheckpoint(path.parent, f"{path.name} is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError: truncated, empty, not safetensors
        raise CorruptCheckpoint(path.parent, f"{path.name} is truncated or not a safetensors file "
                                             f"({type(exc).__name__}: {exc})") from None


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and check every file of one checkpoint folder; raises :class:`CorruptCheckpoint` naming the file."""
    path = Path(path)
    step = checkpoint_step(path)
    if step is None:
        raise CorruptCheckpoint(path, "not a checkpoint-<step> folder")
    state_file = path / "state.json"
    if not state_file.is_file():
        raise CorruptCheckpoint(path, "state.json is missing (an unfinished checkpoint)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptCheckpoint(path, f"state.json is not valid JSON ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or \
            not isinstance(state.get("scheduler"), dict):
        raise CorruptCheckpoint(path, "state.json lacks 'step' (a whole number) or 'scheduler'")
    if state["step"] != step:
        raise CorruptCheckpoint(path, f"state.json says step {state['step']}, the folder name says {step}")
    trainable = _safetensors(path / "trainable.safetensors")
    opt_file = path / "optimizer.pt"
    if not opt_file.is_file():
        raise CorruptCheckpoint(path, "optimizer.pt is missing")
    try:
        optimizer = torch.load(opt_file, weights_only=True, map_location="cpu")
    except Exception as exc:  # truncated zip, not a torch file
        raise CorruptCheckpoint(path, f"optimizer.pt is truncated or unreadable ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(optimizer, dict) or "state" not in optimizer or "param_groups" not in optimizer:
        raise CorruptCheckpoint(path, "optimizer.pt holds no optimizer state")
    ema = _safetensors(path / "ema.safetensors") if (path / "ema.safetensors").exists() else None
    return Checkpoint(path=path, step=step, state=state, trainable=trainable, optimizer=optimizer, ema=ema)


def newest_complete(work_dir: str | os.PathLike | None) -> Checkpoint | None:
    """The newest checkpoint in ``work_dir`` that reads completely, or None when there is none at all.

    Every folder passed over is logged as a warning with its reason (and listed in ``Checkpoint.skipped``). Raises
    :class:`NoCompleteCheckpoint` when ``checkpoint-<step>`` folders exist but none is complete.
    """
    if not work_dir or not Path(work_dir).is_dir():
        return None
    found, stray = candidates(work_dir)
    for p, reason in stray:
        log.warning("skipped %s: %s", p, reason)
    skipped: list[tuple[Path, str]] = []
    for p in found:
        try:
            ckpt = read_checkpoint(p)
        except CorruptCheckpoint as exc:
            skipped.append((p, exc.reason))
            log.warning("skipped checkpoint %s: %s", p, exc.reason)
            continue
        if skipped:
            log.warning("resuming from %s, the newest complete checkpoint", p)
        ckpt.skipped = skipped
        return ckpt
    if skipped:
        listing = "; ".join(f"{p}: {reason}" for p, reason in skipped)
        raise NoCompleteCheckpoint(f"no complete checkpoint to resume from in {work_dir} ({listing}); "
                                   f"{START_FRESH_HINT}")
    return None
