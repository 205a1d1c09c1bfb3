"""Objectives that train the SynthFace judges on the one loop (core/training/loop.py), and ``build_judges`` which
trains, measures on held-out identities, and writes them (safetensors + ONNX for insightface).

All three judges learn from one pool of renders of TRAIN identities (random attributes and views, 64x64):

1. ``AttributeObjective``: cross-entropy over one head per attribute and identity fact;
2. ``RecognizerObjective``: CosFace (additive cosine margin) softmax over the pool's identities; each sample is
   arcface-aligned either with the canonical SynthFace landmarks (what ``embed`` does without landmarks) or with its
   true landmarks plus detector-like noise (what ``norm_crop`` after a detector gives);
3. ``DetectorObjective``: the SCRFD-layout detector on 128x128 canvases holding one face at a random scale,
   position and rotation (or none): per-anchor score (BCE, ignore zone around positives), box distances and
   landmark offsets (smooth L1) at positive anchors.

Augmentations (blur, noise, brightness) make the judges tolerate the softer images a generator makes.

Modules: ``augment`` (training inputs and augmentations), ``objectives`` (the three objectives and their targets),
``build`` (training, measuring and writing), ``checks`` (insightface compatibility), ``readme`` (README.md).
"""
from __future__ import annotations

from .augment import augment, detector_canvases, recognizer_inputs
from .build import (ATTR_ARCH, DEFAULTS, DET_ARCH, EVAL_SEED, REC_ARCH, _train_one, build_judges,
                    recalibrate_bn)
from .checks import insightface_check
from .objectives import (STRIDE_RANGES, TRAIT_NUMBERS, AttributeObjective, DetectorObjective, MarginHead,
                         RecognizerObjective, TraitHead, detector_targets, trait_targets)
from .readme import readme, summary_from_files, write_readme

__all__ = ["ATTR_ARCH", "DEFAULTS", "DET_ARCH", "EVAL_SEED", "REC_ARCH", "STRIDE_RANGES", "TRAIT_NUMBERS",
           "AttributeObjective", "DetectorObjective", "MarginHead", "RecognizerObjective", "TraitHead", "_train_one",
           "augment", "build_judges", "detector_canvases", "detector_targets", "insightface_check",
           "recalibrate_bn", "readme", "recognizer_inputs", "summary_from_files", "trait_targets", "write_readme"]
