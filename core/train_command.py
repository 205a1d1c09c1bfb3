"""``facesmith train WHAT ...``: each trainable thing registers its command module here."""
from __future__ import annotations

from importlib import import_module

# what -> module (relative to the pack root) with add_arguments(parser) and main(args)
TRAINABLES = {
    "base": ("trainers.base_cli", "the tiny SynthFace text-to-image base model"),
    "judges": ("trainers.judges_cli", "the SynthFace judges (identity recognizer, attribute classifier)"),
    "domain-encoder": ("trainers.e4t_cli", "an E4T domain encoder + domain LoRA over a dataset folder"),
}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    import sys

    for name, (mod, help_text) in TRAINABLES.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_train_module=mod)
        if name in sys.argv[2:3]:
            import_module(f"...{mod}", __name__).add_arguments(sp)


def main(args) -> int:
    return int(import_module(f"...{args._train_module}", __name__).main(args) or 0)
