"""SynthFace renderer: a deterministic procedural face, ``render(identity, attributes) -> uint8 HxWx3``.

Identity traits (what a person would recognise: face shape, skin tone, eye shape/spacing/colour, brows, nose, mouth,
ears, hair line and style, moles) come only from the identity id. Attributes (hair colour, expression, glasses, hat,
beard, background) are chosen independently. Small pose/scale/lighting jitter comes from a per-view seed.
Drawing happens at 4x the output size with PIL and is downsampled with a box filter (anti-aliasing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

IDENTITY_COUNT = 20000
_SEED = 0x5F4CE  # domain seed: changing it changes every identity

ATTRIBUTES: dict[str, list] = {
    "hair": ["black", "brown", "blond", "red", "white", "blue"],
    "expression": ["neutral", "smiling", "surprised"],
    "glasses": [False, True],
    "hat": [False, True],
    "beard": [False, True],
    "background": ["gray", "blue", "green", "yellow"],
}
ATTRIBUTE_NAMES = list(ATTRIBUTES)

HAIR_RGB = {
    "black": (25, 22, 22), "brown": (105, 62, 30), "blond": (232, 200, 110),
    "red": (190, 50, 25), "white": (238, 238, 235), "blue": (40, 90, 220),
}
BACKGROUND_RGB = {"gray": (128, 128, 128), "blue": (120, 160, 225), "green": (120, 190, 120), "yellow": (230, 215, 110)}
SKIN_RGB = [(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 140, 100),
            (170, 112, 76), (141, 85, 52), (110, 66, 40), (80, 50, 32)]
EYE_COLOURS = {"brown": (100, 55, 20), "blue": (50, 110, 210), "green": (50, 150, 70),
               "gray": (140, 145, 150), "hazel": (150, 110, 40), "black": (15, 15, 15)}
HAIR_STYLES = ["short", "long", "side_part", "curly", "buzz", "spiky"]
EYE_SHAPES = ["round", "almond", "narrow"]
NOSE_SHAPES = ["triangle", "line", "round"]
HAT_RGB = [(150, 30, 120), (70, 100, 40), (20, 110, 110), (230, 120, 170)]

# Identity traits that are closed-vocabulary facts (used by captions/VQA and the attribute judge).
TRAIT_VOCAB = {"eye_colour": list(EYE_COLOURS), "hair_style": HAIR_STYLES, "eye_shape": EYE_SHAPES,
               "nose_shape": NOSE_SHAPES, "skin_tone": [f"tone{i + 1}" for i in range(len(SKIN_RGB))]}


@dataclass(frozen=True)
class IdentityTraits:
    identity: int
    face_w: float      # half width of the face, fraction of canvas
    face_h: float      # half height
    squareness: float  # superellipse exponent (2 = oval, 3.5 = square)
    chin_taper: float
    skin: tuple
    skin_tone: str
    eye_colour: str
    eye_shape: str
    eye_spacing: float
    eye_size: float
    eye_y: float
    brow_thick: float
    brow_tilt: float
    nose_shape: str
    nose_len: float
    nose_w: float
    mouth_w: float
    mouth_y: float
    lip: tuple
    ear_size: float
    hairline: float
    hair_style: str
    moles: tuple       # ((x, y, r), ...) in face coordinates

    def facts(self) -> dict:
        """Closed-vocabulary identity facts (eye colour, hair style, ...)."""
        return {"eye_colour": self.eye_colour, "hair_style": self.hair_style, "eye_shape": self.eye_shape,
                "nose_shape": self.nose_shape, "skin_tone": self.skin_tone}


def _check_identity(identity: int) -> int:
    identity = int(identity)
    if not 0 <= identity < IDENTITY_COUNT:
        raise ValueError(f"SynthFace identity must be in [0, {IDENTITY_COUNT}), got {identity}")
    return identity


@lru_cache(maxsize=65536)
def identity_traits(identity: int) -> IdentityTraits:
    """The fixed traits of one identity (deterministic)."""
    identity = _check_identity(identity)
    r = np.random.default_rng([_SEED, identity])
    tone = int(r.integers(len(SKIN_RGB)))
    base = np.array(SKIN_RGB[tone], dtype=float)
    skin = tuple(int(v) for v in np.clip(base * r.uniform(0.95, 1.05) + r.normal(0, 4, 3), 0, 255))
    lip = tuple(int(v) for v in np.clip(np.array(skin) * np.array([0.85, 0.55, 0.55]) + r.normal(0, 6, 3), 0, 255))
    n_moles = int(r.integers(0, 3))
    moles = tuple((float(r.uniform(-0.6, 0.6)), float(r.uniform(-0.1, 0.6)), float(r.uniform(0.018, 0.03)))
                  for _ in range(n_moles))
    return IdentityTraits(
        identity=identity,
        face_w=float(r.uniform(0.20, 0.28)), face_h=float(r.uniform(0.27, 0.34)),
        squareness=float(r.uniform(2.0, 3.6)), chin_taper=float(r.uniform(0.0, 0.45)),
        skin=skin, skin_tone=f"tone{tone + 1}",
        eye_colour=list(EYE_COLOURS)[int(r.integers(len(EYE_COLOURS)))],
        eye_shape=EYE_SHAPES[int(r.integers(3))],
        eye_spacing=float(r.uniform(0.32, 0.52)), eye_size=float(r.uniform(0.8, 1.25)),
        eye_y=float(r.uniform(-0.18, 0.0)),
        brow_thick=float(r.uniform(0.5, 1.6)), brow_tilt=float(r.uniform(-0.25, 0.25)),
        nose_shape=NOSE_SHAPES[int(r.integers(3))],
        nose_len=float(r.uniform(0.16, 0.32)), nose_w=float(r.uniform(0.08, 0.2)),
        mouth_w=float(r.uniform(0.25, 0.5)), mouth_y=float(r.uniform(0.42, 0.58)),
        lip=lip, ear_size=float(r.uniform(0.12, 0.24)),
        hairline=float(r.uniform(-0.72, -0.42)),
        hair_style=HAIR_STYLES[int(r.integers(len(HAIR_STYLES)))],
        moles=moles,
    )


def check_attributes(attrs: dict) -> dict:
    """Validate and complete an attribute dict (missing keys get the first value)."""
    out = {}
    for name, values in ATTRIBUTES.items():
        v = attrs.get(name, values[0])
        if v not in values:
            raise ValueError(f"SynthFace attribute {name!r} must be one of {values}, got {v!r}")
        out[name] = v
    unknown = set(attrs) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown SynthFace attribute(s) {sorted(unknown)}; known: {ATTRIBUTE_NAMES}")
    return out


def random_attributes(rng: np.random.Generator) -> dict:
    return {k: v[int(rng.integers(len(v)))] for k, v in ATTRIBUTES.items()}


def _shade(c, f):
    return tuple(int(max(0, min(255, v * f))) for v in c)


def _face_outline(t: IdentityTraits, cx, cy, S, n=64):
    pts = []
    a, b, p = t.face_w * S, t.face_h * S, t.squareness
    for i in range(n):
        th = 2 * math.pi * i / n
        c, s = math.cos(th), math.sin(th)
        x = a * math.copysign(abs(c) ** (2 / p), c)
        y = b * math.copysign(abs(s) ** (2 / p), s)
        if y > 0:
            x *= 1 - t.chin_taper * (y / b) ** 2
        pts.append((cx + x, cy + y))
    return pts


def render(identity: int, attributes: dict | None = None, size: int = 64, view: int | None = None) -> np.ndarray:
    """Render one face. ``view=None`` is the canonical pose; an int gives a deterministic jittered view."""
    t = identity_traits(identity)
    at = check_attributes(attributes or {})
    if size < 16 or size > 1024:
        raise ValueError(f"SynthFace size must be in [16, 1024], got {size}")
    S = size * 4
    if view is None:
        dx = dy = rot = 0.0
        scale, light = 1.0, 1.0
        jr = np.random.default_rng([_SEED, identity, 7])
    else:
        jr = np.random.default_rng([_SEED, identity, 1_000_003 + int(view)])
        dx, dy = jr.uniform(-0.04, 0.04, 2) * S
        rot = float(jr.uniform(-5, 5))
        scale, light = float(jr.uniform(0.94, 1.06)), float(jr.uniform(0.88, 1.12))
    hat_rgb = HAT_RGB[int(jr.integers(len(HAT_RGB)))]

    bg = Image.new("RGB", (S, S), BACKGROUND_RGB[at["background"]])
    layer = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    cx, cy = S / 2, S * 0.50
    fw, fh = t.face_w * S, t.face_h * S
    hair = HAIR_RGB[at["hair"]]
    skin = t.skin

    # shoulders (shirt) and neck
    d.ellipse([cx - S * 0.42, cy + fh * 0.95, cx + S * 0.42, cy + fh * 2.4], fill=(60, 64, 72))
    d.rectangle([cx - fw * 0.38, cy + fh * 0.6, cx + fw * 0.38, cy + fh * 1.15], fill=_shade(skin, 0.9))
    # long hair behind the head
    if t.hair_style == "long":
        d.rounded_rectangle([cx - fw * 1.22, cy - fh * 1.1, cx + fw * 1.22, cy + fh * 1.05], radius=fw * 0.6, fill=hair)
    # ears
    ey = cy + t.eye_y * fh
    er = t.ear_size * S * 0.5
    for sgn in (-1, 1):
        ex = cx + sgn * fw * 0.98
        d.ellipse([ex - er * 0.6, ey - er * 0.3, ex + er * 0.6, ey + er * 1.5], fill=_shade(skin, 0.93))
    # face
    outline = _face_outline(t, cx, cy, S)
    d.polygon(outline, fill=skin)
    # beard (under the mouth, along the jaw)
    my = cy + t.mouth_y * fh
    if at["beard"]:
        jaw = [p for p in outline if p[1] > cy + fh * 0.15]
        jaw.sort(key=lambda p: p[0])
        top = [(cx + fw * 0.75, cy + fh * 0.15), (cx + t.mouth_w * fw * 0.7, my - fh * 0.12),
               (cx - t.mouth_w * fw * 0.7, my - fh * 0.12), (cx - fw * 0.75, cy + fh * 0.15)]
        d.polygon(jaw + top, fill=_shade(hair, 0.8))
    # hair on top (cap above the hairline)
    hl = cy + t.hairline * fh
    # hair is drawn under the hat too: the band below the brim shows its colour
    cap = [p for p in _face_outline(t, cx, cy - fh * 0.06, S * 1.08) if p[1] < hl]
    if t.hair_style == "buzz":
        cap = [p for p in outline if p[1] < hl + fh * 0.05]
    if len(cap) >= 3:
        d.polygon(cap + [(cx + fw * 0.9, hl), (cx - fw * 0.9, hl)], fill=hair)
    if t.hair_style == "side_part":
        d.polygon([(cx - fw * 1.02, hl - fh * 0.1), (cx + fw * 0.2, hl - fh * 0.2), (cx - fw * 0.9, hl + fh * 0.35)], fill=hair)
    elif t.hair_style == "curly":
        for i in range(9):
            x = cx - fw + i * fw / 4
            d.ellipse([x - fw * 0.18, hl - fh * 0.55 - fw * 0.18, x + fw * 0.18, hl - fh * 0.55 + fw * 0.18], fill=hair)
    elif t.hair_style == "spiky":
        for i in range(6):
            x = cx - fw * 0.8 + i * fw * 0.32
            d.polygon([(x - fw * 0.16, hl - fh * 0.4), (x + fw * 0.16, hl - fh * 0.4), (x, hl - fh * 0.95)], fill=hair)
    elif t.hair_style == "long":
        d.rectangle([cx - fw * 1.05, hl - fh * 0.1, cx - fw * 0.85, cy + fh * 0.5], fill=hair)
        d.rectangle([cx + fw * 0.85, hl - fh * 0.1, cx + fw * 1.05, cy + fh * 0.5], fill=hair)
    # moles
    for mx, myy, mr in t.moles:
        x, y, rr = cx + mx * fw, cy + myy * fh, mr * S
        d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=_shade(skin, 0.55))
    # eyes and brows
    ex_off = t.eye_spacing * fw
    ew = 0.13 * fw * t.eye_size * 1.6
    eh = ew * {"round": 0.8, "almond": 0.55, "narrow": 0.36}[t.eye_shape]
    brow_raise = 0.0
    if at["expression"] == "surprised":
        eh *= 1.45
        brow_raise = 0.12 * fh
    elif at["expression"] == "smiling":
        eh *= 0.8
    brow_col = _shade(hair, 0.7) if at["hair"] != "white" else (200, 200, 200)
    for sgn in (-1, 1):
        x = cx + sgn * ex_off
        d.ellipse([x - ew, ey - eh, x + ew, ey + eh], fill=(250, 250, 250))
        ir = min(eh, ew) * 0.85
        d.ellipse([x - ir, ey - ir, x + ir, ey + ir], fill=EYE_COLOURS[t.eye_colour])
        pr = ir * 0.45
        d.ellipse([x - pr, ey - pr, x + pr, ey + pr], fill=(5, 5, 5))
        by = ey - eh - fh * 0.1 - brow_raise
        tilt = t.brow_tilt * ew * sgn
        d.line([(x - ew * 1.1, by + tilt), (x + ew * 1.1, by - tilt)], fill=brow_col, width=max(2, int(S * 0.012 * t.brow_thick)))
    # nose
    ny0, ny1 = ey + eh * 0.6, ey + eh * 0.6 + t.nose_len * fh
    nw = t.nose_w * fw
    nose_col = _shade(skin, 0.72)
    if t.nose_shape == "triangle":
        d.polygon([(cx, ny0), (cx - nw, ny1), (cx + nw, ny1)], fill=_shade(skin, 0.85), outline=nose_col)
    elif t.nose_shape == "line":
        d.line([(cx, ny0), (cx - nw * 0.3, ny1), (cx + nw * 0.6, ny1)], fill=nose_col, width=max(2, int(S * 0.01)))
    else:
        d.ellipse([cx - nw, ny1 - nw * 0.8, cx + nw, ny1 + nw * 0.4], fill=_shade(skin, 0.8))
    # mouth (expression)
    mw = t.mouth_w * fw
    if at["expression"] == "neutral":
        d.line([(cx - mw, my), (cx + mw, my)], fill=t.lip, width=max(3, int(S * 0.018)))
    elif at["expression"] == "smiling":
        box = [cx - mw * 1.1, my - fh * 0.22, cx + mw * 1.1, my + fh * 0.22]
        d.chord(box, 0, 180, fill=(150, 30, 40))
        d.chord([box[0] + mw * 0.15, box[1] + fh * 0.05, box[2] - mw * 0.15, box[3] - fh * 0.12], 0, 180, fill=(250, 250, 250))
        d.arc(box, 0, 180, fill=t.lip, width=max(3, int(S * 0.014)))
    else:  # surprised
        rx, ry = mw * 0.42, fh * 0.16
        d.ellipse([cx - rx, my - ry, cx + rx, my + ry], fill=(60, 10, 15), outline=t.lip, width=max(2, int(S * 0.012)))
    # glasses
    if at["glasses"]:
        gw, gh = ew * 1.55, max(eh, ew * 0.55) * 1.6
        lw = max(3, int(S * 0.016))
        for sgn in (-1, 1):
            x = cx + sgn * ex_off
            d.rounded_rectangle([x - gw, ey - gh, x + gw, ey + gh], radius=gh * 0.5, outline=(20, 20, 20), width=lw)
            d.line([(x + sgn * gw, ey - gh * 0.3), (cx + sgn * fw * 1.0, ey - gh * 0.5)], fill=(20, 20, 20), width=lw)
        d.line([(cx - ex_off + gw, ey - gh * 0.2), (cx + ex_off - gw, ey - gh * 0.2)], fill=(20, 20, 20), width=lw)
    # hat
    if at["hat"]:
        top, brim = cy - fh * 1.45, hl - fh * 0.2
        d.chord([cx - fw * 1.12, top, cx + fw * 1.12, brim + (brim - top)], 180, 360, fill=hat_rgb)
        d.rounded_rectangle([cx - fw * 1.3, brim - fh * 0.12, cx + fw * 1.3, brim + fh * 0.03], radius=fh * 0.05, fill=_shade(hat_rgb, 0.7))

    # pose jitter: rotate/scale/translate the face layer, then light the whole picture
    if view is not None:
        layer = layer.transform((S, S), Image.AFFINE, _affine(S, rot, scale, dx, dy), resample=Image.BILINEAR)
    bg.paste(layer, (0, 0), layer)
    img = bg.resize((size, size), Image.BOX)
    arr = np.asarray(img, dtype=np.float32)
    if light != 1.0:
        arr = arr * light
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def _affine(S, rot_deg, scale, dx, dy):
    """Inverse affine (output -> input) for PIL: rotate by rot and scale about the centre, then shift."""
    th = math.radians(rot_deg)
    c, s = math.cos(th) / scale, math.sin(th) / scale
    cx = cy = S / 2
    ox, oy = cx + dx, cy + dy
    # input = R^-1 (output - o) + c
    return (c, s, cx - c * ox - s * oy, -s, c, cy + s * ox - c * oy)


def landmarks(identity: int, attributes: dict | None = None, size: int = 64, view: int | None = None) -> np.ndarray:
    """The 5 face landmarks of ``render(identity, attributes, size, view)`` as float32 ``(5, 2)`` (x, y) in output
    pixel coordinates (pixel i's centre is at i): left eye centre, right eye centre (left/right in the image), nose
    tip, left and right mouth corner -- insightface's order. Same geometry and pose jitter as :func:`render`."""
    t = identity_traits(identity)
    at = check_attributes(attributes or {})
    if size < 16 or size > 1024:
        raise ValueError(f"SynthFace size must be in [16, 1024], got {size}")
    S = size * 4
    cx, cy = S / 2, S * 0.50
    fw, fh = t.face_w * S, t.face_h * S
    ey = cy + t.eye_y * fh
    ex_off = t.eye_spacing * fw
    ew = 0.13 * fw * t.eye_size * 1.6
    eh = ew * {"round": 0.8, "almond": 0.55, "narrow": 0.36}[t.eye_shape]
    if at["expression"] == "surprised":
        eh *= 1.45
    elif at["expression"] == "smiling":
        eh *= 0.8
    ny1 = ey + eh * 0.6 + t.nose_len * fh
    my = cy + t.mouth_y * fh
    mw = t.mouth_w * fw * {"neutral": 1.0, "smiling": 1.1, "surprised": 0.42}[at["expression"]]
    pts = np.array([[cx - ex_off, ey], [cx + ex_off, ey], [cx, ny1], [cx - mw, my], [cx + mw, my]], dtype=np.float64)
    pts += 0.5  # PIL fills pixel X over [X, X + 1)
    if view is not None:
        jr = np.random.default_rng([_SEED, int(identity), 1_000_003 + int(view)])  # the draws render() makes
        dx, dy = jr.uniform(-0.04, 0.04, 2) * S
        rot = float(jr.uniform(-5, 5))
        scale = float(jr.uniform(0.94, 1.06))
        th = math.radians(rot)
        rm = scale * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        pts = (pts - S / 2) @ rm.T + np.array([S / 2 + dx, S / 2 + dy])
    return (pts / 4.0 - 0.5).astype(np.float32)
