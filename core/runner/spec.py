"""ComfyUI's node contract as the runner reads it: ``INPUT_TYPES()`` specs, RETURN_TYPES, link values, type matching."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")  # ComfyUI's frontend adds control_after_generate to these by convention


@dataclass
class InputSpec:
    name: str
    required: bool
    type: str  # INT FLOAT STRING BOOLEAN COMBO, or a link type such as IMAGE, MODEL, "*"
    choices: Optional[list] = None
    options: dict = field(default_factory=dict)

    @property
    def is_widget(self) -> bool:
        """Whether ComfyUI's graph editor shows this input as a widget (and so stores it in widgets_values)."""
        if self.type not in WIDGET_TYPES:
            return False
        return not (self.options.get("forceInput") or self.options.get("defaultInput"))

    @property
    def has_control_widget(self) -> bool:
        """ComfyUI's frontend adds a "control_after_generate" widget value after this one."""
        flag = self.options.get("control_after_generate")
        if flag is None:
            return self.type == "INT" and self.name in SEED_NAMES
        return bool(flag)

    @property
    def has_upload_widget(self) -> bool:
        return any(k.endswith("_upload") and v for k, v in self.options.items())

    @property
    def link_only(self) -> bool:
        return self.type not in WIDGET_TYPES and self.type != "*"

    def describe(self) -> str:
        return f"one of {format_choices(self.choices)}" if self.type == "COMBO" else self.type


def format_choices(choices: Optional[list], limit: int = 20) -> str:
    choices = list(choices or [])
    if not choices:
        return "[] (no choices available)"
    shown = ", ".join(repr(c) for c in choices[:limit])
    more = f", ... ({len(choices) - limit} more)" if len(choices) > limit else ""
    return f"[{shown}{more}]"


def parse_spec(name: str, raw: Any, required: bool) -> InputSpec:
    if isinstance(raw, (list, tuple)) and raw:
        t = raw[0]
        opts = raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {}
    elif isinstance(raw, str):
        t, opts = raw, {}
    else:
        raise ValueError(f"input '{name}' has an invalid spec {raw!r} (expected a tuple like ('INT', {{...}}))")
    if isinstance(t, (list, tuple)):
        return InputSpec(name, required, "COMBO", list(t), dict(opts))
    if not isinstance(t, str):
        raise ValueError(f"input '{name}' has an invalid type {t!r}")
    if t == "COMBO":
        return InputSpec(name, required, "COMBO", list(opts.get("options") or []), dict(opts))
    return InputSpec(name, required, t, None, dict(opts))


def input_types(cls: Any) -> dict:
    it = cls.INPUT_TYPES()
    if not isinstance(it, dict):
        raise ValueError(f"INPUT_TYPES() returned {type(it).__name__}, expected a dict")
    return it


def input_specs(cls: Any) -> dict[str, InputSpec]:
    """required then optional inputs, in declaration order (the order ComfyUI creates widgets in)."""
    it = input_types(cls)
    specs: dict[str, InputSpec] = {}
    for category in ("required", "optional"):
        for name, raw in (it.get(category) or {}).items():
            specs[name] = parse_spec(name, raw, category == "required")
    return specs


def hidden_inputs(cls: Any) -> dict[str, str]:
    hidden = (input_types(cls).get("hidden") or {})
    out = {}
    for name, kind in hidden.items():
        if isinstance(kind, (list, tuple)) and kind:
            kind = kind[0]
        out[name] = str(kind)
    return out


def return_types(cls: Any) -> list[str]:
    return [normalize_type(t) for t in (getattr(cls, "RETURN_TYPES", ()) or ())]


def return_names(cls: Any) -> list[str]:
    types = return_types(cls)
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return [str(n) for n in names] + types[len(names):]


def normalize_type(t: Any) -> str:
    return "COMBO" if isinstance(t, (list, tuple)) else str(t)


def is_output_node(cls: Any) -> bool:
    return bool(getattr(cls, "OUTPUT_NODE", False))


def types_match(received: str, expected: str) -> bool:
    """ComfyUI's validate_node_input: equal, or "*" on either side, or overlapping comma-separated unions."""
    if received == expected:
        return True
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    if "*" in got or "*" in want:
        return True
    return bool(got & want)


def is_link(value: Any) -> bool:
    """An API-format link: ``[source_node_id_str, output_index]`` (ComfyUI's is_link)."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def looks_like_bad_link(value: Any) -> bool:
    """``[5, 0]``: a link written with an integer node id, which ComfyUI would not treat as a link."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def validate_inputs_args(cls: Any) -> tuple[set[str], bool] | None:
    """Names VALIDATE_INPUTS takes (and whether it takes **kwargs), or None if the class has none."""
    fn = getattr(cls, "VALIDATE_INPUTS", None)
    if fn is None:
        return None
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(), True
    names = set()
    kwargs = False
    for p in sig.parameters.values():
        if p.kind == p.VAR_KEYWORD:
            kwargs = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    names.discard("self")
    return names, kwargs


def node_sort_key(node_id: str):
    """Numeric ids in numeric order, then the rest ("5:2" group/subgraph ids) as strings."""
    try:
        return (0, int(node_id), "")
    except (TypeError, ValueError):
        return (1, 0, str(node_id))
