"""``facesmith convert UI.json API.json``: convert a workflow saved by ComfyUI's graph editor to the API format."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("ui", help="workflow as saved by ComfyUI's graph editor (or a ComfyUI PNG)")
    parser.add_argument("api", help="API-format JSON to write")
    parser.add_argument("--force", action="store_true", help="overwrite API.json if it exists")


def write_json_atomic(path: Path, data, force: bool = False) -> None:
    """Write JSON via a temporary file + os.replace; refuses to replace an existing file unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if the file appeared meanwhile
            except FileExistsError:
                raise FileExistsError(f"{path} exists; pass --force to overwrite it") from None
            except OSError:  # no hard links here
                if path.exists():
                    raise FileExistsError(f"{path} exists; pass --force to overwrite it") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        write_json_atomic(dst, prompt, force=args.force)
    except (FileExistsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {dst} ({len(prompt)} node(s))")
    return 0
