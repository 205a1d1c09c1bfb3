"""E4T one-image concepts (Gal et al. 2023) and the textual-inversion baseline: encoder, personalisation, concepts
as generate() conditioners, and ComfyUI embedding / kohya LoRA files.

Public API::

    from facesmith.core.concept import (Concept, DomainEncoder, embed_e4t, embed_textual_inversion,
                                        save_concept, load_concept)
"""
from .concept import BaseMismatch, Concept
from .encoder import DomainEncoder, E4TEncoder, EncoderConfig, extract_features, untrained
from .export import load_concept, save_concept
from .personalize import embed_e4t
from .textual_inversion import embed_textual_inversion
from .tokens import DEFAULT_TOKEN

__all__ = ["BaseMismatch", "Concept", "DomainEncoder", "E4TEncoder", "EncoderConfig", "extract_features",
           "untrained", "load_concept", "save_concept", "embed_e4t", "embed_textual_inversion", "DEFAULT_TOKEN"]
