"""The FaceSmith engine: models, losses, formats, SynthFace, judges, methods and the workflow runner.

Nothing in this package imports ComfyUI; the node classes in ``nodes/`` are thin adapters over it.
"""
