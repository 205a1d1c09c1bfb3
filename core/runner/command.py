"""``facesmith run WORKFLOW.json``: run a ComfyUI workflow headless.

Exit codes: 0 success, 1 a node failed while running (files already written are kept), 2 the workflow is invalid
(nothing ran), 130 interrupted.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def load_node_classes() -> tuple[dict, str | None]:
    """The pack's NODE_CLASS_MAPPINGS plus the core stand-ins. Returns (classes, import error text or None).

    The node pack is loaded by name, as ComfyUI loads a custom node pack: the runner executes nodes and does not
    depend on them (no import statement; tests/test_layers.py)."""
    from importlib import import_module

    from .comfy_core_nodes import CORE_NODE_CLASS_MAPPINGS

    classes: dict = {}
    problem = None
    try:
        pack_nodes = import_module("...nodes", __package__)  # ours; it does not need ComfyUI

        classes.update(pack_nodes.NODE_CLASS_MAPPINGS)
        load_errors = getattr(pack_nodes, "LOAD_ERRORS", None) or {}
        if load_errors:
            problem = "; ".join(f"nodes.{name}: {type(e).__name__}: {e}" for name, e in load_errors.items())
    except Exception as e:  # report, and still run workflows of core nodes
        problem = f"{type(e).__name__}: {e}"
    classes.update(CORE_NODE_CLASS_MAPPINGS)
    return classes, problem


def add_arguments(parser) -> None:
    parser.add_argument("workflow", help="workflow file: JSON as saved by ComfyUI (UI format) or exported for the "
                                         "API, or a PNG ComfyUI saved")
    parser.add_argument("--out", default="./output", help="output folder (default: ./output)")
    parser.add_argument("--input-dir", default=None, help="folder LoadImage reads (default: <out>/../input)")
    parser.add_argument("--temp-dir", default=None, help="folder for PreviewImage (default: <out>/../temp)")
    parser.add_argument("--models-dir", default=None, help="models folder (sets FACESMITH_MODELS)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                        help="override an input value, e.g. --set 5.seed=42 (repeatable)")
    parser.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="refuse a Generate or a training estimated to need more memory than this (e.g. 24G; 0 = no limit; "
                             "default: FACESMITH_MAX_MEMORY, else 80%% of the RAM / the GPU's memory)")
    parser.add_argument("--check", action="store_true", help="only validate the workflow; run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no per-node lines or progress bars")
    parser.epilog = "exit codes: 0 success, 1 a node failed, 2 invalid workflow (nothing ran), 130 interrupted"


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(args) -> int:
    from .errors import ExecutionError, WorkflowError
    from .execute import prepare, run_workflow
    from .comfy_core_nodes import directories

    if getattr(args, "models_dir", None):
        os.environ["FACESMITH_MODELS"] = str(Path(args.models_dir).resolve())
    if getattr(args, "max_memory", None) is not None:
        from ..memory import ENV_MAX_MEMORY, parse_size

        try:
            parse_size(args.max_memory)
        except ValueError as e:
            _err(f"error: --max-memory: {e}")
            return EXIT_INVALID
        os.environ[ENV_MAX_MEMORY] = str(args.max_memory)
    classes, problem = load_node_classes()
    if problem:
        _err(f"warning: some FaceSmith nodes could not be loaded ({problem}); workflows using them will be "
             "rejected")
    out = Path(getattr(args, "out", None) or "./output")
    input_dir = getattr(args, "input_dir", None)
    temp_dir = getattr(args, "temp_dir", None)
    overrides = list(getattr(args, "overrides", None) or [])
    quiet = bool(getattr(args, "no_progress", False))
    if not getattr(args, "check", False):
        from ..formats import ensure_folder

        try:  # a file in the way or a folder that cannot be created: say so before loading anything
            ensure_folder(out, "output folder (--out)")
        except OSError as e:
            _err(f"error: {e}")
            return EXIT_INVALID
    try:
        if getattr(args, "check", False):
            o = out.resolve()
            with directories(str(o), str(Path(input_dir).resolve() if input_dir else o.parent / "input"),
                             str(Path(temp_dir).resolve() if temp_dir else o.parent / "temp")):
                prompt, _, warnings = prepare(args.workflow, classes, overrides)
            for w in warnings:
                _err(f"warning: {w}")
            print(f"{args.workflow}: OK, {len(prompt)} node(s)")
            return EXIT_OK
        result = run_workflow(args.workflow, classes, out, input_dir=input_dir, overrides=overrides,
                              progress=not quiet, temp_dir=temp_dir)
    except WorkflowError as e:
        _err(f"error: {e}")
        return EXIT_INVALID
    except ExecutionError as e:
        _err(f"error: {e}")
        if getattr(args, "verbose", False) and e.__cause__ is not None:
            _err("".join(traceback.format_exception(type(e.__cause__), e.__cause__, e.__cause__.__traceback__)))
        files = e.result.files if e.result is not None else []
        if files:
            _err("files written before the failure (kept):")
            for f in files:
                _err(f"  {f}")
        return EXIT_INTERRUPTED if e.interrupted else EXIT_FAILED
    total = sum(result.timings.values())
    print(f"done: {len(result.order)} node(s) in {total:.1f}s" + (", wrote:" if result.files else ""))
    for f in result.files:
        print(f"  {f}")
    return EXIT_OK
