"""The engine's one training loop (``loop``) and its checkpoints (``checkpoints``).

Everything that trains (the trainers in ``trainers/``, one-image tuning in ``core/concept``, the nodes) uses this
package; it imports nothing above ``core``."""
