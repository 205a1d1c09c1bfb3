"""``facesmith convert UI.json API.json``: convert a workflow saved by ComfyUI's graph editor to the API format."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..formats import OverwriteRefused, atomic_write_text


def add_arguments(parser) -> None:
    parser.add_argument("ui", help="workflow as saved by ComfyUI's graph editor (or a ComfyUI PNG)")
    parser.add_argument("api", help="API-format JSON to write")
    parser.add_argument("--force", action="store_true", help="overwrite API.json if it exists")


def main(args) -> int:
    from .command import EXIT_INVALID, load_node_classes
    from .errors import WorkflowError
    from .graph import load_workflow_file, to_api

    dst = Path(args.api)
    if dst.exists() and not args.force:
        print(f"error: {dst} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    classes, problem = load_node_classes()
    if problem:
        print(f"warning: some FaceSmith nodes could not be loaded ({problem})", file=sys.stderr)
    try:
        prompt = to_api(load_workflow_file(args.ui), classes)
    except WorkflowError as e:
        print(f"error: {args.ui}: {e}", file=sys.stderr)
        return EXIT_INVALID
    try:
        atomic_write_text(dst, json.dumps(prompt, indent=2, ensure_ascii=False) + "\n", overwrite=args.force)
    except OverwriteRefused as e:
        print(f"error: {e.with_hint('pass --force to overwrite it')}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {dst} ({len(prompt)} node(s))")
    return 0
