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
