"""What the face pipeline saw, drawn on the images: kept faces boxed in green with their FACES row number and
detector score, their 5 landmarks (eyes blue, nose green, mouth red), faces found but not kept in yellow, and a
red frame around images where no face was kept."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KPS_COLOURS = [(40, 120, 255), (40, 120, 255), (40, 220, 40), (255, 60, 60), (255, 60, 60)]


def draw_faces(images: list[np.ndarray], faces) -> list[np.ndarray]:
    """uint8 RGB copies of ``images`` with ``faces`` (a :class:`~.face_pipeline.Faces` of them) drawn on."""
    font = ImageFont.load_default()
    per_image = faces.per_image()
    out = []
    for i, img in enumerate(images):
        im = Image.fromarray(np.ascontiguousarray(img)).convert("RGB")
        draw = ImageDraw.Draw(im)
        h, w = img.shape[:2]
        width = max(1, round(max(h, w) / 256))
        for j, box in faces.others:
            if j == i:
                draw.rectangle([float(v) for v in box], outline=(255, 210, 0), width=width)
        for k in per_image[i]:
            x0, y0, x1, y1 = (float(v) for v in faces.boxes[k])
            draw.rectangle([x0, y0, x1, y1], outline=(0, 230, 0), width=width)
            r = max(1.0, (x1 - x0) / 40)
            for (x, y), colour in zip(faces.landmarks[k], KPS_COLOURS):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
            draw.text((x0 + 2, max(0.0, y0 - 12)), f"#{k} {faces.scores[k]:.2f}", fill=(0, 230, 0), font=font)
        if not per_image[i]:
            draw.rectangle([0, 0, w - 1, h - 1], outline=(230, 0, 0), width=width * 2)
            draw.text((4, 4), "no face", fill=(230, 0, 0), font=font)
        out.append(np.asarray(im))
    return out


def _fmt_box(box) -> str:
    return "[" + ", ".join(str(int(round(float(v)))) for v in box) + "]"


def describe(faces, select: str = "") -> str:
    """A text report: which detector and recognizer ran, then one line per image, then the notes. Similarity scores
    and embeddings are not part of it."""
    rec = faces.recognizer_label
    if faces.recognizer is not None:
        rec += f", {faces.embeddings.shape[1] if faces.embeddings is not None and len(faces) else '?'}-d"
        rec += (f", same-person cosine threshold {faces.threshold:.3f}" if faces.threshold is not None
                else ", no calibrated same-person threshold")
    lines = [f"{len(faces)} face(s) kept from {faces.num_images} image(s)"
             + (f" (select: {select})" if select else ""),
             f"detector: {faces.detector_label}", f"recognizer: {rec}"]
    per_image = faces.per_image()
    for i in range(faces.num_images):
        line = f"image {i}: {faces.found[i]} face(s) found"
        if i in faces.retried:
            line += " (after the padded retry)" if faces.found[i] else " (also none after the padded retry)"
        if per_image[i]:
            line += "; kept " + ", ".join(f"#{k} score {faces.scores[k]:.2f} box {_fmt_box(faces.boxes[k])}"
                                          for k in per_image[i])
        elif i in faces.skipped:
            line += "; skipped"
        lines.append(line)
    lines += [f"note: {n}" for n in faces.notes]
    return "\n".join(lines)
