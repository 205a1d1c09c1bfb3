"""What the trainers' settings dataclasses share: whole-number checks, the recipe (the settings that shape the
weights, which checkpoints record and refuse to resume under other values) and the loop's ``TrainConfig``."""
from __future__ import annotations

from dataclasses import asdict

from ..core.training.loop import TrainConfig

# settings that do not shape the weights, or that the loop records itself (TrainConfig's shaping settings)
LOOP_FIELDS = frozenset({"steps", "seconds", "checkpoint_every", "log_every", "learning_rate", "seed", "warmup_steps",
                         "lr_schedule"})


def check_whole_numbers(settings, names) -> None:
    """Each of ``names`` a whole number, >= 0 for ``steps`` and >= 1 for the others."""
    for name in names:
        v = getattr(settings, name)
        low = 0 if name == "steps" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {v!r}")


def plain_settings(settings, skip=frozenset()) -> dict:
    """The settings (but ``skip``) as plain JSON values."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items() if k not in skip}


def recipe_of_settings(settings) -> dict:
    """The settings that shape the weights."""
    return plain_settings(settings, LOOP_FIELDS)


def loop_config(settings, work_dir=None, resume: bool = True, recipe: dict | None = None) -> TrainConfig:
    """The one loop's configuration from a settings dataclass with the common fields."""
    return TrainConfig(steps=settings.steps, learning_rate=settings.learning_rate, seed=settings.seed,
                       checkpoint_every=settings.checkpoint_every, log_every=settings.log_every,
                       warmup_steps=settings.warmup_steps, lr_schedule=settings.lr_schedule, work_dir=work_dir,
                       resume=resume, recipe=recipe or {})


def check_continuation(earlier, model, path, what: str = "configuration", rebase: bool = False) -> None:
    """``--init-from``: the earlier file's model can start this run's ``model`` only with the same configuration
    (``.cfg``), base and face encoder; otherwise a ValueError naming both sides. ``rebase`` (``--rebase``) accepts
    a file trained on another base of the same shape (an earlier stage of this one): the run moves it here."""
    if earlier.cfg != model.cfg:
        raise ValueError(f"init_from {path}: its {what} {earlier.cfg} is not this run's {model.cfg}")
    if earlier.base_fingerprint != model.base_fingerprint and not rebase:
        raise ValueError(f"init_from {path}: it was trained for base {earlier.base_name!r} "
                         f"({earlier.base_fingerprint}), this run's base is {model.base_name!r} "
                         f"({model.base_fingerprint}); --rebase continues it on this base")
    if earlier.face_encoder.fingerprint != model.face_encoder.fingerprint:
        raise ValueError(f"init_from {path}: it was trained with another face encoder")


def continuation_record(earlier, path) -> dict:
    """What a continued run's ``info["continues"]`` says about the earlier file it started from (its base too, which
    differs from the run's after ``--rebase``), with what that file itself continued: a file made in several stages
    carries all of them."""
    out = {"file": str(path), "steps": earlier.info.get("steps"), "command": earlier.info.get("command"),
           "base_name": earlier.base_name, "base_fingerprint": earlier.base_fingerprint}
    if earlier.info.get("continues"):
        out["continues"] = earlier.info["continues"]
    return out


def training_device(device: str = "auto") -> str:
    """Where a trainer loads its frozen base: ``device`` as asked, but each process's own GPU under ``accelerate
    launch`` with several processes, and the GPU for ``auto`` when there is one (where the one loop will put the
    trainable modules)."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # as the loop: CPU processes use gloo
    if state.num_processes > 1 or (device == "auto" and state.device.type != "cpu"):
        return str(state.device)
    return device


POOL_WAIT_SECONDS = 6 * 3600  # a CPU pool takes minutes to hours; a crashed builder's lock is stale at once


def shared_pool_cache(cache):
    """The block that loads or builds a ``--pool-cache`` file, held by one process at a time: trainings started
    together on one cache (``facesmith assets --build --jobs N``) wait while the first one builds it, then load it.
    ``cache`` None: no lock."""
    import contextlib

    from ..core.locks import folder_lock

    if cache is None:
        return contextlib.nullcontext()
    return folder_lock(cache.parent, f"building the training pool {cache.name}", wait=POOL_WAIT_SECONDS)

