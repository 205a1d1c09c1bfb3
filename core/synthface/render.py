"""SynthFace renderer: a deterministic procedural face, ``render(identity, attributes) -> uint8 HxWx3``.

An identity is one combination of 13 discrete, bold identity traits (``TRAIT_VOCAB``: skin tone, face shape, eye
colour, shape and spacing, brow weight and shape, nose, mouth, ears, mole, hairline, hair style); the 20,000
identities are distinct combinations fixed by the domain seed, and ``render_facts`` draws any combination. Each
trait has words (captions.py), so a prompt can describe a person completely. Attributes (hair colour, expression,
glasses, hat, beard, background) are chosen independently. Small pose/scale/lighting jitter comes from a per-view
seed. Drawing happens at 4x the output size with PIL and is downsampled with a box filter (anti-aliasing).
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
HAT_RGB = [(150, 30, 120), (70, 100, 40), (20, 110, 110), (230, 120, 170)]

# ---- identity: a person is one combination of these discrete, bold traits (the documented vocabulary) ----------
# Every trait survives 64 px and a small model, and every trait has words (captions.py), so a prompt can describe a
# person completely. Values are rendered by the tables below; nothing about identity varies between renders of one
# person except pose, scale and light (the per-view jitter).
SKIN_TONES = {"pale": (255, 226, 200), "fair": (241, 196, 162), "light": (226, 174, 132), "medium": (200, 144, 102),
              "olive": (176, 140, 84), "tan": (150, 96, 60), "deep": (112, 68, 42), "dark": (76, 48, 32)}
EYE_COLOURS = {"brown": (110, 60, 20), "blue": (40, 110, 230), "green": (40, 170, 60), "gray": (150, 155, 160)}
HAIR_STYLES = ["short", "long", "side_part", "curly", "buzz", "spiky"]
EYE_SHAPES = {"round": 0.9, "almond": 0.68, "narrow": 0.5}  # eye height / eye width
FACE_SHAPES = {  # half width, half height (fractions of the canvas), superellipse exponent, chin taper
    "oval": (0.215, 0.315, 2.0, 0.18), "round": (0.265, 0.275, 2.0, 0.0), "square": (0.25, 0.29, 3.8, 0.0),
    "long": (0.195, 0.345, 2.6, 0.08), "heart": (0.245, 0.31, 2.2, 0.5)}
EYE_SPACINGS = {"close": 0.36, "average": 0.47, "wide": 0.58}  # eye offset from the midline / face half width
BROW_WEIGHTS = {"thin": 0.55, "thick": 1.9}
BROW_SHAPES = {"flat": 0.0, "upturned": 0.42, "downturned": -0.42}  # outer-end rise / eye width
NOSE_SHAPES = ["pointed", "straight", "button"]
MOUTH_SIZES = {"small": 0.25, "wide": 0.5}  # half width / face half width
EAR_SIZES = {"small": 0.11, "large": 0.25}
MOLES = {"none": None, "left_cheek": (-0.5, 0.32), "right_cheek": (0.5, 0.32), "chin": (0.12, 0.8),
         "forehead": (-0.18, -0.45)}  # (x, y) in face half-size units; left/right as seen in the image
HAIRLINES = {"high": -0.75, "low": -0.42}

TRAIT_VOCAB: dict[str, list] = {
    "skin_tone": list(SKIN_TONES), "face_shape": list(FACE_SHAPES), "eye_colour": list(EYE_COLOURS),
    "eye_shape": list(EYE_SHAPES), "eye_spacing": list(EYE_SPACINGS), "brow_weight": list(BROW_WEIGHTS),
    "brow_shape": list(BROW_SHAPES), "nose_shape": NOSE_SHAPES, "mouth": list(MOUTH_SIZES), "ears": list(EAR_SIZES),
    "mole": list(MOLES), "hairline": list(HAIRLINES), "hair_style": HAIR_STYLES,
}
TRAIT_NAMES = list(TRAIT_VOCAB)
# The five facts the first SynthFace world had (identity_richness is measured over pairs that share all of them).
CORE_FACTS = ("skin_tone", "eye_colour", "hair_style", "eye_shape", "nose_shape")


@dataclass(frozen=True)
class IdentityTraits:
    identity: int
    traits: tuple      # one value per TRAIT_NAMES entry, in that order
    face_w: float      # half width of the face, fraction of canvas
    face_h: float      # half height
    squareness: float  # superellipse exponent (2 = oval, 3.8 = square)
    chin_taper: float
    skin: tuple
    lip: tuple
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
    ear_size: float
    hairline: float
    hair_style: str
    moles: tuple       # ((x, y, r), ...) in face coordinates

    def facts(self) -> dict:
        """Every identity trait as its closed-vocabulary value (``{"skin_tone": "olive", ...}``)."""
        return dict(zip(TRAIT_NAMES, self.traits))


def trait_combinations() -> int:
    """How many distinct people the trait vocabulary can describe."""
    return math.prod(len(v) for v in TRAIT_VOCAB.values())


@lru_cache(maxsize=1)
def _identity_codes() -> np.ndarray:
    """Identity id -> index of its trait combination: IDENTITY_COUNT distinct combinations, fixed by the seed."""
    return np.random.default_rng([_SEED, 1]).choice(trait_combinations(), IDENTITY_COUNT, replace=False)


def _check_identity(identity: int) -> int:
    identity = int(identity)
    if not 0 <= identity < IDENTITY_COUNT:
        raise ValueError(f"SynthFace identity must be in [0, {IDENTITY_COUNT}), got {identity}")
    return identity


def traits_from_facts(facts: dict, identity: int = -1) -> IdentityTraits:
    """The render parameters of a person described by ``facts`` (one value per trait in TRAIT_VOCAB)."""
    missing = [k for k in TRAIT_NAMES if k not in facts]
    if missing:
        raise ValueError(f"SynthFace identity facts miss {missing}")
    for k in TRAIT_NAMES:
        if facts[k] not in TRAIT_VOCAB[k]:
            raise ValueError(f"SynthFace trait {k!r} must be one of {TRAIT_VOCAB[k]}, got {facts[k]!r}")
    f = facts
    skin = SKIN_TONES[f["skin_tone"]]
    lip = tuple(int(v) for v in np.clip(np.array(skin) * np.array([0.8, 0.45, 0.45]), 0, 255))
    face_w, face_h, squareness, chin_taper = FACE_SHAPES[f["face_shape"]]
    mole = MOLES[f["mole"]]
    return IdentityTraits(
        identity=int(identity), traits=tuple(f[k] for k in TRAIT_NAMES),
        face_w=face_w, face_h=face_h, squareness=squareness, chin_taper=chin_taper, skin=skin, lip=lip,
        eye_colour=f["eye_colour"], eye_shape=f["eye_shape"], eye_spacing=EYE_SPACINGS[f["eye_spacing"]],
        eye_size=1.1, eye_y=-0.1, brow_thick=BROW_WEIGHTS[f["brow_weight"]], brow_tilt=BROW_SHAPES[f["brow_shape"]],
        nose_shape=f["nose_shape"], nose_len=0.26, nose_w=0.15, mouth_w=MOUTH_SIZES[f["mouth"]], mouth_y=0.5,
        ear_size=EAR_SIZES[f["ears"]], hairline=HAIRLINES[f["hairline"]], hair_style=f["hair_style"],
        moles=() if mole is None else ((mole[0], mole[1], 0.04),),
    )


@lru_cache(maxsize=65536)
def identity_traits(identity: int) -> IdentityTraits:
    """The fixed traits of one identity (deterministic): a distinct combination of the trait vocabulary."""
    identity = _check_identity(identity)
    code = int(_identity_codes()[identity])
    facts = {}
    for name in reversed(TRAIT_NAMES):  # mixed-radix digits of the combination index
        values = TRAIT_VOCAB[name]
        code, digit = divmod(code, len(values))
        facts[name] = values[digit]
    return traits_from_facts(facts, identity)


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


MOLE_RGB = (35, 18, 12)


def _eye_size(t: IdentityTraits, expression: str, S: float) -> tuple[float, float]:
    """Half width and half height of each eye (canvas pixels); the expression opens or narrows it."""
    ew = 0.05 * S * t.eye_size
    eh = ew * EYE_SHAPES[t.eye_shape] * {"neutral": 1.0, "smiling": 0.8, "surprised": 1.45}[expression]
    return ew, eh


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
    return _draw(identity_traits(identity), attributes, size, view, _check_identity(identity))


def facts_code(facts: dict) -> int:
    """The index of a trait combination (the inverse of the digits ``identity_traits`` reads)."""
    traits_from_facts(facts)  # validates
    code = 0
    for name in TRAIT_NAMES:
        code = code * len(TRAIT_VOCAB[name]) + TRAIT_VOCAB[name].index(facts[name])
    return code


def render_facts(facts: dict, attributes: dict | None = None, size: int = 64, view: int | None = None) -> np.ndarray:
    """Render the person that ``facts`` describe: any combination of the trait vocabulary, not only the
    IDENTITY_COUNT numbered identities (pose jitter and hat colour are drawn from the combination)."""
    return _draw(traits_from_facts(facts), attributes, size, view, IDENTITY_COUNT + facts_code(facts))


def _draw(t: IdentityTraits, attributes: dict | None, size: int, view: int | None, key: int) -> np.ndarray:
    """Draw traits ``t`` with ``attributes``; ``key`` seeds the per-view jitter (the identity id for identities)."""
    identity = key
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
        d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=MOLE_RGB)
    # eyes and brows
    ex_off = t.eye_spacing * fw
    ew, eh = _eye_size(t, at["expression"], S)
    brow_raise = 0.12 * fh if at["expression"] == "surprised" else 0.0
    brow_col = _shade(hair, 0.7) if at["hair"] != "white" else (200, 200, 200)
    for sgn in (-1, 1):
        x = cx + sgn * ex_off
        d.ellipse([x - ew, ey - eh, x + ew, ey + eh], fill=(250, 250, 250))
        ir = min(eh * 0.95, ew * 0.62)
        d.ellipse([x - ir, ey - ir, x + ir, ey + ir], fill=EYE_COLOURS[t.eye_colour])
        pr = ir * 0.45
        d.ellipse([x - pr, ey - pr, x + pr, ey + pr], fill=(5, 5, 5))
        by = ey - eh - fh * 0.1 - brow_raise
        tilt = t.brow_tilt * ew * sgn
        d.line([(x - ew * 1.1, by + tilt), (x + ew * 1.1, by - tilt)], fill=brow_col,
               width=max(2, int(S * 0.014 * t.brow_thick)))
    # nose
    ny0, ny1 = ey + eh * 0.6, ey + eh * 0.6 + t.nose_len * fh
    nw = t.nose_w * fw
    nose_col = _shade(skin, 0.72)
    if t.nose_shape == "pointed":
        d.polygon([(cx, ny0), (cx - nw * 1.2, ny1), (cx + nw * 1.2, ny1)], fill=_shade(skin, 0.7))
    elif t.nose_shape == "straight":
        d.line([(cx, ny0), (cx, ny1)], fill=nose_col, width=max(3, int(S * 0.02)))
        d.line([(cx - nw, ny1), (cx + nw, ny1)], fill=nose_col, width=max(3, int(S * 0.016)))
    else:
        d.ellipse([cx - nw * 1.1, ny1 - nw * 1.0, cx + nw * 1.1, ny1 + nw * 0.5], fill=_shade(skin, 0.72))
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
    ew, eh = _eye_size(t, at["expression"], S)
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
