"""``facesmith train WHAT ...``: each trainable thing registers its command module here."""
from __future__ import annotations

from importlib import import_module

# what -> module (in this package) with add_arguments(parser) and main(args)
MULTI_PROCESS = {"domain-encoder"}  # the commands that run under `accelerate launch` / `torchrun` with N processes
TRAINABLES = {
    "base": (".base_cli", "the tiny SynthFace text-to-image base model"),
    "judges": (".judges_cli", "the SynthFace judges (identity recognizer, attribute classifier)"),
    "domain-encoder": (".e4t_cli", "an E4T domain encoder + domain LoRA over a dataset folder"),
    "face-encoder": (".face_encoder_cli", "the identity adapter's own face recognizer (not the judge)"),
    "identity-adapter": (".identity_adapter_cli", "an IDAdapter-style identity adapter over SynthFace"),
    "instruct": (".instruct_cli", "a MIGE-style instruction model (generation, editing, both) over SynthFace"),
    "face-vqa": (".understand_cli", "the unified face understanding model (MoE or dense) or a LoRA on a local VLM"),
}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    import sys

    for name, (mod, help_text) in TRAINABLES.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_train_module=mod)
        if name in sys.argv[2:3]:
            import_module(mod, __package__).add_arguments(sp)


def main(args) -> int:
    import os

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and args.what not in MULTI_PROCESS:
        raise SystemExit(f"facesmith train {args.what} runs as one process (it was launched as {world}); run it "
                         f"without accelerate launch / torchrun. Several processes: "
                         f"{', '.join(sorted(MULTI_PROCESS))}")
    return int(import_module(args._train_module, __package__).main(args) or 0)
