"""Face VQA pairs with closed-vocabulary answers, from SynthFace labels."""
from __future__ import annotations

from .render import ATTRIBUTES, TRAIT_VOCAB, check_attributes, identity_traits

_YESNO = ["no", "yes"]
QUESTIONS = {
    "hair": ("What colour is the hair?", [str(v) for v in ATTRIBUTES["hair"]]),
    "expression": ("What is the facial expression?", list(ATTRIBUTES["expression"])),
    "glasses": ("Is the person wearing glasses?", _YESNO),
    "hat": ("Is the person wearing a hat?", _YESNO),
    "beard": ("Does the person have a beard?", _YESNO),
    "background": ("What colour is the background?", list(ATTRIBUTES["background"])),
    "eye_colour": ("What colour are the eyes?", TRAIT_VOCAB["eye_colour"]),
    "hair_style": ("What is the hair style?", TRAIT_VOCAB["hair_style"]),
    "eye_shape": ("What shape are the eyes?", TRAIT_VOCAB["eye_shape"]),
    "nose_shape": ("What shape is the nose?", TRAIT_VOCAB["nose_shape"]),
}


def answer_vocab(key: str) -> list[str]:
    return QUESTIONS[key][1]


def vqa_pairs(identity: int, attrs: dict) -> list[dict]:
    """All question/answer pairs for one image: ``[{"key", "question", "answer", "choices"}]``."""
    attrs = check_attributes(attrs)
    facts = identity_traits(identity).facts()
    out = []
    for key, (question, choices) in QUESTIONS.items():
        v = attrs[key] if key in attrs else facts[key]
        ans = ("yes" if v else "no") if isinstance(v, bool) else str(v)
        out.append({"key": key, "question": question, "answer": ans, "choices": choices})
    return out
