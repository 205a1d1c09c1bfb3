"""The layers point one way: ``core/`` (the engine) never imports ``trainers/`` or ``nodes/``.

Read from the source (no imports, so it is instant): every import statement under ``core/`` is resolved to the module
it names. Naming a module of an upper layer by string is allowed only in the application's two entry points, listed
here with why, so that a new one is a decision someone makes on purpose."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("trainers", "nodes")
# where core/ may name an upper layer by string (importlib), never by an import statement
ENTRY_POINTS = {
    "core/cli.py": "the command-line routing table (COMMANDS) names each sub-command's module",
    "core/runner/command.py": "load_node_classes loads the pack's node classes by name, as ComfyUI loads a pack",
}
_DOTTED_UPPER = re.compile(r"(^|[^\w/])(trainers|nodes)\.\w")


def _core_files():
    return sorted(p for p in (ROOT / "core").rglob("*.py") if "__pycache__" not in p.parts)


def _target(path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Modules an import statement names, relative to the pack root ("core.x", "trainers.loop", ...)."""
    if isinstance(node, ast.Import):
        return [a.name.removeprefix("facesmith.") for a in node.names]
    here = list(path.relative_to(ROOT).with_suffix("").parts[:-1])  # the module's package
    if node.level == 0:
        base = (node.module or "").removeprefix("facesmith.").removeprefix("facesmith")
        return [base] if base else [a.name for a in node.names]
    pkg = here[:len(here) - (node.level - 1)]
    if node.module is None:  # from ... import nodes
        return [".".join(pkg + [a.name]) for a in node.names]
    return [".".join(pkg + [node.module])]


def _violations(path: Path) -> list[str]:
    rel = str(path.relative_to(ROOT))
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for t in _target(path, node):
                if t.split(".")[0] in UPPER:
                    found.append(f"{rel}:{node.lineno} imports {t}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and rel not in ENTRY_POINTS:
            if _DOTTED_UPPER.search(node.value) and "\n" not in node.value:  # e.g. sys.modules["x.nodes.y"]
                found.append(f"{rel}:{node.lineno} names {node.value!r}")
    return found


def test_core_never_imports_trainers_or_nodes():
    problems = [v for p in _core_files() for v in _violations(p)]
    assert not problems, "core/ must not depend on trainers/ or nodes/:\n" + "\n".join(problems)


def test_the_check_sees_relative_absolute_and_string_forms(tmp_path, monkeypatch):
    cases = {
        "core/concept/x.py": "def f():\n    from ...trainers.loop import train\n",
        "core/y.py": "from .. import nodes\n",
        "core/z.py": "import facesmith.nodes.comfy_bridge\n",
        "core/runner/w.py": "import sys\nb = sys.modules.get(f'{root}.nodes.comfy_bridge')\n",
    }
    for rel, text in cases.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert all(len(_violations(tmp_path / rel)) == 1 for rel in cases), [_violations(tmp_path / r) for r in cases]
    ok = tmp_path / "core/ok.py"
    ok.write_text("from .training.loop import train\nfrom ..core import progress\nNAME = 'nodes'\n")
    assert _violations(ok) == []


def test_entry_points_exist():
    """The allow-list names real files (a renamed entry point must be re-examined, not silently allowed)."""
    for rel in ENTRY_POINTS:
        assert (ROOT / rel).is_file(), rel
