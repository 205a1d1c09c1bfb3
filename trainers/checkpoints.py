"""Moved to ``core/training/checkpoints.py``; kept so old imports still work."""
from ..core.training.checkpoints import *  # noqa: F401,F403
from ..core.training.checkpoints import Checkpoint, CorruptCheckpoint, NoCompleteCheckpoint, candidates, \
    newest_complete, read_checkpoint  # noqa: F401
