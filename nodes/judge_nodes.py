"""Judge nodes: what the SynthFace judges see in images (attributes, identity similarity, prompt adherence)."""
from __future__ import annotations

import numpy as np

from ..core.images import check_comfy
from .node_errors import input_error


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


class FaceSmithJudgeFaces:
    DISPLAY_NAME = "Judge Faces (FaceSmith)"
    CATEGORY = "FaceSmith/Judge"
    DESCRIPTION = (
        "Runs the SynthFace judges on images: the attributes the attribute judge sees (hair colour, expression, "
        "glasses, hat, beard, background, plus identity facts such as eye colour), the identity similarity of each "
        "image to an optional reference face (cosine of the recognizer's embeddings; above the recognizer's "
        "threshold means 'same person'), and whether the attributes a prompt asks for are present. The judges are "
        "small models trained on SynthFace renders: on other kinds of faces their answers mean little."
    )
    RETURN_TYPES = ("STRING", "FLOAT")
    RETURN_NAMES = ("report", "mean_similarity")
    OUTPUT_TOOLTIPS = ("A text report, one line per image plus a summary.",
                       "Mean identity similarity of the images to the reference (0.0 when no reference is given).")
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The faces to judge (a batch; each is judged on its own)."}),
            },
            "optional": {
                "reference": ("IMAGE", {"tooltip": "A face of the person the images should show; several images "
                                                   "are averaged into one identity."}),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "The prompt the images were made from; the attributes it names "
                                                 "(e.g. 'with red hair, wearing glasses') are checked."}),
            },
        }

    def run(self, images, reference=None, prompt=""):
        node = self.DISPLAY_NAME
        try:
            images = check_comfy(images, "images")
        except (TypeError, ValueError) as exc:
            raise input_error(node, "images", str(exc)) from None
        if reference is not None:
            try:
                reference = check_comfy(reference, "reference")
            except (TypeError, ValueError) as exc:
                raise input_error(node, "reference", str(exc)) from None
        if prompt is not None and not isinstance(prompt, str):
            raise input_error(node, "prompt", f"must be text, got {type(prompt).__name__}")
        from ..core.judges import metrics
        from ..core.synthface.captions import parse_caption

        try:
            judge = metrics.attribute_judge()
            seen = judge.predict(images)
            sims = metrics.identity_similarity(images, reference) if reference is not None else None
            threshold = metrics.recognizer().threshold
        except FileNotFoundError as exc:
            raise RuntimeError(f"{node}: the judge weights are missing ({exc})") from None
        asked = parse_caption(prompt) if prompt else {}
        lines = []
        hits_total = 0
        for i, s in enumerate(seen):
            attrs = ", ".join(f"{k} {_fmt(s[k])}" for k in judge.heads)
            line = f"image {i + 1}: {attrs}"
            if sims is not None:
                line += f"; similarity {sims[i]:.3f} ({'same person' if sims[i] > threshold else 'different person'})"
            if asked:
                missing = [f"{k}={_fmt(v)} (sees {_fmt(s[k])})" for k, v in asked.items() if s[k] != v]
                hits = len(asked) - len(missing)
                hits_total += hits
                line += f"; prompt attributes present {hits}/{len(asked)}"
                if missing:
                    line += " -- missing: " + ", ".join(missing)
            lines.append(line)
        n = len(seen)
        summary = [f"{n} image(s) judged"]
        mean_sim = 0.0
        if sims is not None:
            mean_sim = float(np.mean(sims))
            summary.append(f"mean identity similarity {mean_sim:.3f}, {int(np.sum(sims > threshold))}/{n} recognised "
                           f"as the reference (threshold {threshold:.3f})")
        else:
            summary.append("no reference: identity similarity not measured")
        if asked:
            summary.append(f"prompt adherence {hits_total / (len(asked) * n):.3f} over "
                           + ", ".join(f"{k}={_fmt(v)}" for k, v in asked.items()))
        elif prompt:
            summary.append("the prompt names no SynthFace attribute")
        report = "; ".join(summary) + "\n" + "\n".join(lines)
        return {"ui": {"text": [report]}, "result": (report, mean_sim)}


NODE_CLASS_MAPPINGS = {"FaceSmithJudgeFaces": FaceSmithJudgeFaces}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
