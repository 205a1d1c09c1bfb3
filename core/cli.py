"""The ``facesmith`` command line. Each sub-command lives in its own module with ``add_arguments`` and ``main``;
this file only routes, importing the chosen module lazily so ``facesmith --help`` stays fast.

It is the application's entry point (the composition root): the one module under ``core/`` that names modules of
the layers above the engine (``trainers``), by name in ``COMMANDS``, never by an import statement
(tests/test_layers.py)."""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

PACK = __package__.rsplit(".", 1)[0]  # "facesmith"

# name -> (module relative to the pack root, help)
COMMANDS = {
    "run": ("core.runner.command", "run a workflow JSON (UI or API format) headless"),
    "convert": ("core.runner.command_convert",
                "convert a workflow saved by ComfyUI's editor (UI format) to API format"),
    "demo": ("core.demo",
             "build/load the built-in SynthFace models and run every shipped workflow, with an HTML report"),
    "synthface": ("core.synthface.command", "SynthFace domain tools (export a dataset folder)"),
    "train": ("trainers.command", "train FaceSmith models (base, judges, domain-encoder)"),
    "bench": ("core.bench.harness", "run a benchmark and write {machine, metrics} JSON"),
    "assets": ("core.assets", "build or check the built-in SynthFace assets"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesmith", description="FaceSmith: faces in ComfyUI graphs, offline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_mod, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=_mod)
        # sub-command modules add their own arguments lazily
        if name in sys.argv[1:2]:
            import_module(f"{PACK}.{_mod}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0]] + argv
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.command:
        parser.print_help()
        return 2
    module = import_module(f"{PACK}.{args._module}")
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, no traceback
        print(interrupted_text(exc), file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.verbose or not isinstance(exc, user_errors()):
            raise
        print(f"error: {user_error_text(exc, args)}", file=sys.stderr, flush=True)
        return EXIT_FAILED


EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


def user_errors() -> tuple:
    """What a user can fix from the message alone (a file in the way, a bad value, a folder in use): reported as one
    line without a traceback (``-v`` shows it). Anything else is a bug and keeps its traceback. Imported only when
    an error happens, so ``facesmith --help`` stays fast."""
    from .locks import FolderLocked

    errors = [OSError, ValueError, FolderLocked]
    try:
        from .training.checkpoints import NoCompleteCheckpoint
        errors.append(NoCompleteCheckpoint)
    except ImportError:  # pragma: no cover - trainers need torch
        pass
    return tuple(errors)


def interrupted_text(exc: BaseException) -> str:
    """``interrupted; checkpoint kept: PATH ...`` when the training loop saved one (it sets ``exc.checkpoint``)."""
    if not hasattr(exc, "checkpoint"):
        return "interrupted"
    if exc.checkpoint is None:
        return "interrupted before the first checkpoint; nothing was kept"
    return f"interrupted; checkpoint kept: {exc.checkpoint} (run the same command again to continue from it)"


def user_error_text(exc: BaseException, args) -> str:
    """The error in the command line's words: a file-exists error names the command's own flag."""
    from .formats import OverwriteRefused

    if isinstance(exc, OverwriteRefused):
        if hasattr(args, "overwrite"):
            return exc.with_hint("add --overwrite to replace it")
        if hasattr(args, "force"):
            return exc.with_hint("add --force to replace it")
        return exc.with_hint("remove it or choose another output")
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
