"""Errors raised by the workflow runner: one ``WorkflowError`` listing every problem found before anything runs, and
``ExecutionError`` for a node that failed while running (with the partial result)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class NodeError:
    """One problem in a workflow. ``node_id``/``class_type``/``input`` are None where they do not apply."""

    node_id: Optional[str]
    class_type: Optional[str]
    input: Optional[str]
    message: str
    kind: str = "invalid"  # unknown_node, missing_input, type_mismatch, out_of_range, not_in_list, bad_value,
    #                        bad_link, cycle, no_output, json, override, custom_validation, conversion, format

    def __str__(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node {self.node_id}" + (f" ({self.class_type})" if self.class_type else ""))
        if self.input is not None:
            where.append(f"input '{self.input}'")
        return (", ".join(where) + ": " if where else "") + self.message


class WorkflowError(ValueError):
    """A workflow that cannot run. ``errors`` lists every problem found (not just the first)."""

    def __init__(self, errors: list[NodeError] | NodeError | str, source: str | None = None):
        if isinstance(errors, str):
            errors = [NodeError(None, None, None, errors)]
        elif isinstance(errors, NodeError):
            errors = [errors]
        self.errors: list[NodeError] = list(errors)
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        head = f"{self.source}: " if self.source else ""
        if len(self.errors) == 1:
            return f"{head}invalid workflow: {self.errors[0]}"
        lines = [f"{head}invalid workflow, {len(self.errors)} errors:"]
        lines += [f"  - {e}" for e in self.errors]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._text()


class ExecutionError(RuntimeError):
    """A node raised while the workflow was running. Outputs written before it are kept; ``result`` holds them."""

    def __init__(self, node_id: str, class_type: str, message: str, result: Any = None, interrupted: bool = False):
        self.node_id = node_id
        self.class_type = class_type
        self.message = message
        self.result = result
        self.interrupted = interrupted
        super().__init__(f"node {node_id} ({class_type}) {'was interrupted' if interrupted else 'failed'}: {message}")
