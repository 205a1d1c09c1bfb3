"""Moved to ``core/training/loop.py`` (the engine's one training loop); kept so old imports still work."""
from ..core.training.loop import *  # noqa: F401,F403
from ..core.training.loop import Objective, TrainConfig, TrainResult, fit_steps, latest_checkpoint, loss_graph, \
    lr_factor, train  # noqa: F401
