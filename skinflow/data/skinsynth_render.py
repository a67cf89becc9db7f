"""SkinSynth rendering: one procedural clinical photo from sampled attributes (numpy + PIL only).

``render(spec, size, rng)`` draws skin of the given Fitzpatrick type, the lesions the attributes
describe (shape, border, colour, elevation, arrangement, secondary features) and photographic
clutter (hair, ruler, clothing, shadow, blur, rotation, exposure). Everything random comes from the
``rng`` passed in, so an image depends only on its spec and seed.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

F32 = np.float32
_ND = NormalDist()

# Base skin RGB (0-1) per Fitzpatrick type.
SKIN_BASE = {
    1: (0.95, 0.82, 0.74), 2: (0.90, 0.73, 0.61), 3: (0.81, 0.62, 0.47),
    4: (0.67, 0.47, 0.32), 5: (0.47, 0.31, 0.20), 6: (0.29, 0.19, 0.13),
}
FLAT = frozenset({"macule", "patch", "erosion", "ulcer", "telangiectasia"})
SATELLITE = frozenset({"papule", "vesicle", "pustule", "comedo", "cyst", "nodule", "bulla", "wheal"})
# Lesion diameter (mm) per size class and the field of view (mm across the frame) it is shot at.
DIAMETER_MM = {"lt_5mm": (2.0, 5.0), "5_to_10mm": (5.0, 10.0), "10_to_30mm": (10.0, 30.0),
               "gt_30mm": (30.0, 50.0)}
FOV_MM = {"lt_5mm": (16.0, 35.0), "5_to_10mm": (25.0, 50.0), "10_to_30mm": (40.0, 80.0),
          "gt_30mm": (70.0, 110.0)}
# morphology -> (height / radius, height cap / frame size, profile, gloss)
ELEVATION = {
    "papule": (0.35, 0.04, "dome", 0.15), "plaque": (0.1, 0.015, "plateau", 0.05),
    "nodule": (0.6, 0.12, "dome", 0.35), "tumour": (0.6, 0.15, "dome", 0.3),
    "vesicle": (0.55, 0.04, "dome", 0.9), "bulla": (0.45, 0.06, "dome", 0.9),
    "pustule": (0.55, 0.04, "dome", 0.6), "wheal": (0.08, 0.012, "plateau", 0.1),
    "cyst": (0.5, 0.08, "dome", 0.5), "comedo": (0.15, 0.01, "dome", 0.2),
}
HAIR_BY_SITE = {"scalp": (40, 90), "arm": (4, 25), "leg": (4, 25), "face": (0, 10), "neck": (0, 8),
                "trunk": (0, 10), "back": (0, 8), "genital": (5, 25), "hand": (0, 6), "foot": (0, 6)}


def _lerp(a, b, t):
    return np.asarray(a, F32) + (np.asarray(b, F32) - np.asarray(a, F32)) * F32(t)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def colour_rgb(name: str, skin, skin_type: int) -> np.ndarray:
    """Lesion colour relative to the surrounding skin; erythema and pink fade on dark skin."""
    dk = (skin_type - 1) / 5.0
    s = np.asarray(skin, F32)
    if name == "erythematous":
        out = _lerp(s, _lerp((0.86, 0.22, 0.20), (0.36, 0.12, 0.13), dk), 0.72 - 0.3 * dk)
    elif name == "pink":
        out = _lerp(s, _lerp((0.97, 0.60, 0.64), (0.58, 0.36, 0.36), dk), 0.55 - 0.15 * dk)
    elif name == "violaceous":
        out = _lerp(s, _lerp((0.52, 0.26, 0.48), (0.24, 0.13, 0.22), dk), 0.75)
    elif name == "brown":
        out = np.minimum(_lerp((0.50, 0.31, 0.18), s * 0.52, dk), s * 0.8)
    elif name == "black":
        out = _lerp((0.14, 0.10, 0.09), (0.07, 0.05, 0.05), dk)
    elif name == "blue_grey":
        out = _lerp(s, _lerp((0.40, 0.45, 0.55), (0.20, 0.22, 0.28), dk), 0.8)
    elif name == "white":
        out = np.array((0.94, 0.93, 0.90), F32)
    elif name == "yellow":
        out = _lerp((0.90, 0.78, 0.38), (0.75, 0.62, 0.30), dk)
    elif name == "skin_coloured":
        out = s * np.array((1.05, 1.03, 1.03), F32)
    elif name == "hyperpigmented":
        out = s * np.array((0.66, 0.62, 0.60), F32)
    elif name == "hypopigmented":
        out = _lerp(s, (0.96, 0.90, 0.85), 0.45)
    elif name == "depigmented":
        out = np.array((0.98, 0.93, 0.89), F32)
    else:
        raise ValueError(f"unknown colour {name!r}")
    return np.clip(out, 0.0, 1.0).astype(F32)


def _smooth_noise(rng, m: int, cells: int) -> np.ndarray:
    grid = rng.standard_normal((cells + 3, cells + 3)).astype(F32)
    field = np.asarray(Image.fromarray(grid).resize((m, m), Image.BICUBIC), dtype=F32)
    return (field - field.mean()) / (field.std() + 1e-6)


class Scene:
    """Float canvas (with rotation padding), height and gloss maps, shared noise fields."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.S, self.pad = size, int(round(0.08 * size))
        self.N = n = size + 2 * self.pad
        self.rng = rng
        m = 2 * n
        self.noise = {"lo": _smooth_noise(rng, m, 10), "mid": _smooth_noise(rng, m, max(8, m // 14)),
                      "net": _smooth_noise(rng, m, max(12, m // 7)), "hi": _smooth_noise(rng, m, m // 3)}
        self.img = np.zeros((n, n, 3), F32)
        self.H = np.zeros((n, n), F32)
        self.G = np.zeros((n, n), F32)
        self.U = np.zeros((n, n), F32)   # union of lesion alphas
        self.skin = np.zeros(3, F32)

    def patch(self, kind, y0, y1, x0, x1):
        oy, ox = self.rng.integers(0, self.N, 2)
        return self.noise[kind][oy + y0:oy + y1, ox + x0:ox + x1]

    def full(self, kind):
        return self.patch(kind, 0, self.N, 0, self.N)


def _line_mask(n: int, polylines, ss: int = 2) -> np.ndarray:
    """Antialiased mask (n x n, 0-1) of polylines [(points, width_px)] drawn at ss x resolution."""
    im = Image.new("L", (n * ss, n * ss), 0)
    draw = ImageDraw.Draw(im)
    for pts, width in polylines:
        draw.line([(float(x) * ss, float(y) * ss) for x, y in pts], fill=255,
                  width=max(1, int(round(width * ss))), joint="curve")
    return np.asarray(im.resize((n, n), Image.BOX), dtype=F32) / 255.0


def _walk(rng, x, y, angle, steps, step, wiggle):
    pts = [(x, y)]
    for _ in range(steps):
        angle += rng.normal(0, wiggle)
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        pts.append((x, y))
    return pts


# --------------------------------------------------------------------------- skin

def _paint_skin(sc: Scene, skin_type: int, site: str, rng) -> None:
    n = sc.N
    base = np.asarray(SKIN_BASE[skin_type], F32) * F32(1 + rng.normal(0, 0.035))
    base = base + rng.normal(0, 0.012, 3).astype(F32)
    if site in ("face", "neck") and skin_type <= 3:
        base = base + np.array((0.02, -0.01, -0.005), F32)
    sc.skin = np.clip(base, 0.05, 1.0)
    shade = 1 + 0.045 * sc.full("lo") + 0.02 * sc.full("mid") + 0.02 * sc.full("hi")
    img = sc.skin[None, None, :] * shade[..., None]
    img[..., 0] += 0.015 * sc.full("lo")                      # mottled redness
    img *= (1 + 0.012 * rng.standard_normal((n, n)).astype(F32))[..., None]
    pores = rng.random((n, n)) > 0.985
    img[pores] *= 0.86
    lines = _crosshatch(sc, rng, wavelength=max(3.0, sc.S / 28), strength=0.5)
    img *= (1 - (0.07 if site in ("hand", "foot") else 0.03) * lines)[..., None]
    if site in ("hand", "foot"):                              # palmar/plantar creases
        polys = [(_walk(rng, *rng.uniform(0, n, 2), rng.uniform(0, 6.3), 20, n / 18, 0.12), 1.2)
                 for _ in range(rng.integers(1, 4))]
        img *= (1 - 0.25 * _line_mask(n, polys))[..., None]
    if skin_type <= 2 and rng.random() < 0.2:                # freckles compete with small lesions
        k = rng.integers(5, 25)
        xs, ys = rng.uniform(0, n, k), rng.uniform(0, n, k)
        yy, xx = np.ogrid[0:n, 0:n]
        for x, y in zip(xs, ys):
            d2 = (xx - x) ** 2 + (yy - y) ** 2
            img *= (1 - 0.18 * np.exp(-d2 / (2 * (0.006 * sc.S + 0.4) ** 2)))[..., None].astype(F32)
    sc.img = img.astype(F32)


def _crosshatch(sc: Scene, rng, wavelength: float, strength: float) -> np.ndarray:
    n = sc.N
    yy, xx = np.mgrid[0:n, 0:n].astype(F32)
    th = rng.uniform(0, math.pi)
    out = np.zeros((n, n), F32)
    warp = 1.5 * sc.full("mid")
    for t in (th, th + rng.uniform(1.0, 1.4)):
        g = np.cos(2 * math.pi * (xx * math.cos(t) + yy * math.sin(t)) / wavelength + warp)
        out = np.maximum(out, np.clip((g - 0.7) / 0.3, 0, 1))
    return out * strength


# --------------------------------------------------------------------------- lesions

def _plan_lesions(spec: dict, sc: Scene, rng, r_main: float) -> list[dict]:
    S, pad = sc.S, sc.pad
    lo, hi = (0.3, 0.7) if rng.random() < 0.8 else (0.18, 0.82)
    cx, cy = pad + S * rng.uniform(lo, hi), pad + S * rng.uniform(lo, hi)
    count, dist, arrangement = spec["lesion_count"], spec["distribution"], spec["arrangement"]
    k = {"single": 1, "few": int(rng.integers(2, 6))}.get(count)
    if k is None:
        k = int(rng.integers(12, 27)) if dist == "generalised" else int(rng.integers(6, 15))
    extras = [m for m in spec["morph_extra"] if m in SATELLITE]
    pool = [spec["main_morph"]] + extras
    lesions = [dict(cx=cx, cy=cy, r=r_main, morph=spec["main_morph"], main=True)]
    line_angle = rng.uniform(0, math.pi)
    ccx, ccy = cx, cy
    for j in range(1, k):
        morph = extras[j - 1] if j - 1 < len(extras) else pool[int(rng.integers(len(pool)))]
        r = r_main * rng.uniform(0.3, 0.85 if count == "few" else 0.75)
        if morph in ("comedo",):
            r = min(r, 0.012 * S + 0.8)
        elif morph in ("pustule", "vesicle") and spec["main_morph"] != morph:
            r = min(r, 0.035 * S)
        r = max(r, 1.3)
        if "linear" in arrangement:
            step = 2.0 * max(r, 0.5 * r_main) * ((j + 1) // 2) * (1 if j % 2 else -1)
            x, y = cx + step * math.cos(line_angle), cy + step * math.sin(line_angle)
            x, y = x + rng.normal(0, 0.3 * r), y + rng.normal(0, 0.3 * r)
        elif "grouped" in arrangement:
            a, d = rng.uniform(0, 2 * math.pi), r_main * rng.uniform(1.1, 2.2) + r
            x, y = cx + d * math.cos(a), cy + d * math.sin(a)
        elif dist == "localised":
            a, d = rng.uniform(0, 2 * math.pi), r_main * rng.uniform(1.3, 3.0) + r
            x, y = cx + d * math.cos(a), cy + d * math.sin(a)
        elif dist == "clustered":
            x, y = ccx + rng.normal(0, 0.14 * S), ccy + rng.normal(0, 0.14 * S)
        else:  # scattered / generalised
            x, y = pad + rng.uniform(0.02, 0.98) * S, pad + rng.uniform(0.02, 0.98) * S
        lesions.append(dict(cx=x, cy=y, r=r, morph=morph, main=False))
    return lesions


def _shape_distance(sc, les, spec, dx, dy, win, rng):
    """Normalised distance field (<1 inside) for one lesion in its window."""
    r, shape = les["r"], les["shape"]
    th = rng.uniform(0, math.pi)
    c, s = math.cos(th), math.sin(th)
    aspect = {"round": (0.85, 1.0), "oval": (0.5, 0.75), "linear": (0.15, 0.3),
              "irregular": (0.6, 1.0)}.get(shape, (0.8, 1.0))
    aspect = rng.uniform(*aspect)
    u = dx * c + dy * s
    v = (-dx * s + dy * c) / aspect
    if shape == "serpiginous":
        lam, amp, w = rng.uniform(0.7, 1.1) * r, 0.35 * r, 0.2 * r
        v0 = amp * np.sin(2 * math.pi * u / lam + rng.uniform(0, 6.3)) * aspect
        return np.maximum(np.abs(v * aspect - v0) / w, np.abs(u) / r)
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    irregular_border = spec["border_regularity"] == "irregular" and les["main"] or (
        spec["border_regularity"] == "irregular" and rng.random() < 0.5)
    m = np.ones_like(rho)
    lumpy = shape == "irregular" and les["shape_main"]
    for k in range(2, 11):
        if k <= 4:
            a = rng.uniform(0.06, 0.14) * 2 / k if lumpy else 0.02 / k
        else:
            a = rng.uniform(0.01, 0.035) * 5 / k if irregular_border else 0.003
        m += F32(a) * np.cos(k * phi + rng.uniform(0, 6.3))
    if "polygonal" in spec["style"] and les["morph"] in ("papule", "plaque"):
        sides = int(rng.integers(5, 8))
        seg = 2 * math.pi / sides
        m *= 0.4 + 0.6 * math.cos(seg / 2) / np.cos(np.mod(phi + rng.uniform(0, 6.3), seg) - seg / 2)
    d = rho / (r * np.maximum(m, 0.35))
    d = d + (0.07 if irregular_border else 0.01) * sc.patch("mid" if r > 8 else "hi", *win)
    if lumpy:
        d = d + 0.06 * sc.patch("lo", *win)
    return d


def _draw_lesion(sc: Scene, les: dict, spec: dict, fills: list, rng) -> None:
    r = les["r"]
    ill = spec["border_definition"] == "ill_defined"
    soft = rng.uniform(0.35, 0.6) if ill else max(1.2 / r, 0.04)
    halo = les["morph"] in ("pustule", "wheal") or "halo" in spec["style"]
    extent = r * (1.55 + soft) * (1.8 if halo else 1.0) + 3
    n = sc.N
    y0, y1 = max(0, int(les["cy"] - extent)), min(n, int(les["cy"] + extent) + 2)
    x0, x1 = max(0, int(les["cx"] - extent)), min(n, int(les["cx"] + extent) + 2)
    if y1 <= y0 or x1 <= x0:
        return
    win = (y0, y1, x0, x1)
    dy = (np.arange(y0, y1, dtype=F32) - les["cy"])[:, None]
    dx = (np.arange(x0, x1, dtype=F32) - les["cx"])[None, :]
    dx, dy = np.broadcast_arrays(dx, dy)
    d = _shape_distance(sc, les, spec, dx, dy, win, rng)
    a = _smoothstep((1 - d) / soft + 0.5)
    shape, morph = les["shape"], les["morph"]
    if shape in ("annular", "arcuate"):
        t = rng.uniform(0.22, 0.38)
        inner = _smoothstep(((1 - t) - d) / max(soft, 0.08) + 0.5)
        if "beaded_ring" in spec["style"] and morph == "papule":
            phi = np.arctan2(dy, dx)
            a = a * (0.7 + 0.3 * np.cos(int(rng.integers(7, 13)) * phi) ** 2)
        centre = 0.0 if "central_clearing" in spec["secondary"] else rng.uniform(0.35, 0.55)
        a = a * (1 - inner * (1 - centre))
        if shape == "arcuate":
            phi = np.arctan2(dy, dx)
            span = rng.uniform(0.55, 0.8) * math.pi
            a = a * _smoothstep((np.cos(phi - rng.uniform(0, 6.3)) - math.cos(span)) / 0.3)
    elif shape == "reticular":
        lace = np.clip(1 - np.abs(sc.patch("net", *win)) / 0.45, 0, 1)
        a = a * np.clip(lace * 1.6, 0, 1)
    a = a * F32(rng.uniform(0.8, 1.0))
    region = sc.img[y0:y1, x0:x1]
    skin = region.copy()
    C = _lesion_colour(sc, fills, win, d, rng, skin)
    if shape == "targetoid":
        dusky = np.minimum(C * 0.75, colour_rgb("violaceous", sc.skin, spec["skin_type"]))
        pale = _lerp(sc.skin, (0.98, 0.86, 0.86), 0.35)
        z1 = _smoothstep((d - 0.3) / 0.1)[..., None]
        z2 = _smoothstep((d - 0.62) / 0.1)[..., None]
        C = dusky * (1 - z1) + (pale * (1 - z2) + C * z2) * z1
    if halo:
        ha = 0.5 * _smoothstep((1.8 - d) / 0.8) * (1 - a)
        hc = colour_rgb("erythematous", sc.skin, spec["skin_type"])
        if "halo" in spec["style"] and morph not in ("pustule", "wheal"):
            hc, ha = _lerp(sc.skin, (0.72, 0.66, 0.36), 0.35), ha * 0.6
        region[:] = region * (1 - ha[..., None]) + hc * ha[..., None]
    if morph == "pustule":
        head = _smoothstep((0.65 - d) / 0.3)[..., None]
        C = C * (1 - head) + np.array((0.96, 0.92, 0.66), F32) * head
    elif morph in ("vesicle", "bulla"):
        C = _lerp(skin, (0.96, 0.94, 0.86), 0.35) * (1 - _smoothstep((d - 0.75) / 0.2)[..., None]) \
            + C * _smoothstep((d - 0.75) / 0.2)[..., None]
    elif morph == "comedo":
        C = np.broadcast_to(np.array((0.15, 0.12, 0.10) if rng.random() < 0.6 else (0.93, 0.9, 0.82), F32),
                            C.shape)
    elif morph == "cyst":
        C = _lerp(C, (0.92, 0.85, 0.6), 0.2)
    elif morph == "wheal":
        pale = _lerp(skin, (0.99, 0.88, 0.88), 0.45)
        rim = _smoothstep((d - 0.55) / 0.3)[..., None]
        C = pale * (1 - rim) + C * rim
    if "pale_centre" in spec["style"]:
        cz = _smoothstep((0.5 - d) / 0.3)[..., None]
        C = C * (1 - 0.45 * cz) + np.array((0.9, 0.84, 0.8), F32) * 0.45 * cz
    region[:] = region * (1 - a[..., None]) + C * a[..., None]
    sc.U[y0:y1, x0:x1] = np.maximum(sc.U[y0:y1, x0:x1], a)
    # elevation and gloss
    elev = ELEVATION.get(morph)
    if elev is not None:
        rel, cap, profile, gloss = elev
        if "polygonal" in spec["style"]:
            profile = "plateau"
        hmax = min(rel * r, cap * sc.S + 1.0)
        if profile == "dome":
            h = np.sqrt(np.clip(1 - d * d, 0, 1))
        else:
            h = _smoothstep((1 - d) / 0.25)
        if shape in ("annular", "arcuate"):
            h = h * np.clip(a * 1.5, 0, 1)
        if "umbilication" in spec["secondary"] and morph in ("papule", "nodule", "vesicle", "pustule", "cyst"):
            h = h - 0.55 * np.exp(-d * d / 0.05)
            region[:] = region * (1 - 0.25 * np.exp(-d * d / 0.03))[..., None]
        if "pearly" in spec["style"]:
            h = h + 0.3 * np.exp(-((d - 0.85) ** 2) / 0.01)
            gloss += 0.5
        if "stuck_on" in spec["style"]:
            h = _smoothstep((1 - d) / 0.08)
        gloss += 0.6 * ("glossy" in spec["style"]) + 0.3 * ("polygonal" in spec["style"])
        Hw = sc.H[y0:y1, x0:x1]
        np.maximum(Hw, (hmax * h).astype(F32), out=Hw)
        Gw = sc.G[y0:y1, x0:x1]
        np.maximum(Gw, (min(gloss, 1.0) * a).astype(F32), out=Gw)
    les["alpha_window"] = (win, a)


def _lesion_colour(sc, fills, win, d, rng, skin):
    shape = d.shape + (3,)
    if len(fills) == 1:
        C = np.broadcast_to(fills[0], shape).astype(F32)
    else:
        ws = []
        for i in range(len(fills)):
            bias = 0.8 if i == 0 else 0.0
            ws.append(np.exp(3.0 * (sc.patch("mid", *win) + bias - 0.35 * i * (d < 0.6))))
        tot = sum(ws)
        C = sum(w[..., None] * f for w, f in zip(ws, fills)) / tot[..., None]
    var = 1 + 0.035 * sc.patch("hi", *win) + 0.03 * sc.patch("mid", *win)
    return (C * var[..., None]).astype(F32)


# --------------------------------------------------------------------------- secondary features

def _features(sc: Scene, spec: dict, main: dict, rng) -> None:
    n, S, sec = sc.N, sc.S, set(spec["secondary"])
    U = sc.U
    core = np.clip((U - 0.3) / 0.5, 0, 1)
    img, t = sc.img, spec["skin_type"]
    yy, xx = np.ogrid[0:n, 0:n]
    mx, my, mr = main["cx"], main["cy"], main["r"]
    dmain = np.sqrt((xx - mx) ** 2 + (yy - my) ** 2) / mr
    morph = set(spec["morph_extra"]) | {spec["main_morph"]}
    pigmented = any(f in spec["fill"] for f in ("brown", "black", "hyperpigmented", "blue_grey"))
    if "ulcer" in morph or "erosion" in morph:
        rr = rng.uniform(0.3, 0.5)
        z = _smoothstep((rr - dmain) / 0.12 + 0.5)
        if "ulcer" in morph:
            base = _lerp((0.70, 0.18, 0.15), (0.84, 0.72, 0.46), 0.5) * (1 + 0.15 * sc.full("hi"))[..., None]
            img[:] = img * (1 - z[..., None]) + base * z[..., None]
            sc.H -= (0.25 * mr * z).astype(F32)
            sc.G = np.maximum(sc.G, 0.5 * z)
        if "erosion" in morph:
            ze = _smoothstep((rr * 0.8 - np.sqrt((xx - mx - 0.3 * mr) ** 2 + (yy - my) ** 2) / mr) / 0.15 + 0.5)
            img[:] = img * (1 - ze[..., None]) + np.array((0.80, 0.26, 0.25), F32) * ze[..., None]
            sc.G = np.maximum(sc.G, 0.8 * ze)
    if "hyperkeratosis" in sec or "stuck_on" in spec["style"]:
        bump = np.clip(sc.full("hi") + 0.5 * sc.full("mid"), 0, None)
        sc.H += (core * bump * min(0.08 * mr, 2.5)).astype(F32)
        if "hyperkeratosis" in sec:
            kz = core * _smoothstep(sc.full("mid") + 0.3) * 0.35
            img[:] = img * (1 - kz[..., None]) + np.array((0.74, 0.66, 0.52), F32) * kz[..., None]
        if "stuck_on" in spec["style"]:
            crypt = (sc.full("hi") > 1.8) * core
            img *= (1 - 0.45 * crypt)[..., None]
            cyst = (sc.full("hi") > 2.2) * core
            img[:] = img * (1 - 0.6 * cyst[..., None]) + 0.6 * cyst[..., None] * np.array((0.95, 0.93, 0.85), F32)
    if "lichenification" in sec:
        lines = _crosshatch(sc, rng, wavelength=max(3.0, S / 22), strength=1.0)
        img *= (1 - 0.18 * lines * core - 0.1 * core)[..., None]
        sc.H += (0.8 * lines * core).astype(F32)
    if "atrophy" in sec:
        img[:] = img * (1 - 0.15 * core[..., None]) + 0.15 * core[..., None] * np.array((0.93, 0.88, 0.86), F32)
        sc.G = np.maximum(sc.G, 0.45 * core)
    if "pigment_network" in sec and pigmented:
        lace = np.clip(1 - np.abs(sc.full("net")) / 0.3, 0, 1)
        img *= (1 - 0.4 * lace * core + 0.06 * (1 - lace) * core)[..., None]
    if "white_striae" in sec:
        lace = np.clip(1 - np.abs(sc.full("net")) / 0.18, 0, 1) * core
        img[:] = img * (1 - 0.75 * lace[..., None]) + 0.75 * lace[..., None] * np.array((0.95, 0.95, 0.94), F32)
    if "scale" in sec:
        cover = rng.uniform(0.45, 0.75) if "silvery" in spec["style"] else rng.uniform(0.15, 0.35)
        field = sc.full("hi") + 0.3 * rng.standard_normal((n, n)).astype(F32)
        thr = _ND.inv_cdf(1 - cover) * math.sqrt(1.09)
        flakes = _smoothstep((field - thr) / 0.6) * core
        white = _lerp((0.95, 0.95, 0.93), (0.80, 0.78, 0.76), (t - 1) / 5)
        img[:] = img * (1 - 0.85 * flakes[..., None]) + 0.85 * flakes[..., None] * white
        sc.H += (0.8 * flakes).astype(F32)
    if "crust" in sec:
        cover = rng.uniform(0.2, 0.45)
        field = sc.full("mid") + 0.4 * sc.full("hi")
        zone = core * _smoothstep((1.0 - dmain) / 0.4) if mr > 6 else core
        blobs = _smoothstep((field - _ND.inv_cdf(1 - cover)) / 0.3) * zone
        mix = _smoothstep(sc.full("hi") * 0.5 + 0.5)[..., None]
        col = np.array((0.80, 0.60, 0.22), F32) * mix + np.array((0.42, 0.25, 0.10), F32) * (1 - mix)
        img[:] = img * (1 - 0.9 * blobs[..., None]) + 0.9 * blobs[..., None] * col
        sc.H += (1.5 * blobs).astype(F32)
    polys_red, polys_dark = [], []
    w = max(0.6, S / 140)
    if "excoriation" in sec:
        for _ in range(int(rng.integers(3, 8))):
            a = rng.uniform(0, math.pi)
            L = rng.uniform(0.4, 1.1) * mr + 3
            x, y = mx + rng.normal(0, 0.6 * mr), my + rng.normal(0, 0.6 * mr)
            polys_red.append(([(x - L / 2 * math.cos(a), y - L / 2 * math.sin(a)),
                               (x + L / 2 * math.cos(a), y + L / 2 * math.sin(a))], w))
    if "fissure" in sec:
        for _ in range(int(rng.integers(1, 4))):
            polys_dark.append((_walk(rng, mx + rng.normal(0, 0.3 * mr), my + rng.normal(0, 0.3 * mr),
                                     rng.uniform(0, 6.3), 6, 0.15 * mr + 0.5, 0.5), w))
    if "telangiectasia" in morph:
        for _ in range(int(rng.integers(3, 8))):
            pts = _walk(rng, mx + rng.normal(0, 0.3 * mr), my + rng.normal(0, 0.3 * mr),
                        rng.uniform(0, 6.3), int(rng.integers(4, 9)), 0.14 * mr + 0.5, 0.6)
            polys_red.append((pts, w * 0.8))
            if len(pts) > 3:
                polys_red.append((_walk(rng, *pts[len(pts) // 2], rng.uniform(0, 6.3), 3, 0.12 * mr, 0.5), w * 0.6))
    if polys_red:
        lm = _line_mask(n, polys_red) * 0.8
        red = _lerp((0.70, 0.08, 0.12), (0.42, 0.06, 0.08), (t - 1) / 5)
        img[:] = img * (1 - lm[..., None]) + lm[..., None] * red
    if polys_dark:
        lm = _line_mask(n, polys_dark) * 0.85
        img[:] = img * (1 - lm[..., None]) + lm[..., None] * np.array((0.30, 0.10, 0.07), F32)
    if "bleeding" in sec:
        for _ in range(int(rng.integers(1, 4))):
            bx, by = mx + rng.normal(0, 0.35 * mr), my + rng.normal(0, 0.35 * mr)
            br = rng.uniform(0.15, 0.35) * mr + 1
            z = _smoothstep((1 - np.sqrt((xx - bx) ** 2 + (yy - by) ** 2) / br) / 0.25 + 0.5)
            col = np.array((0.62, 0.04, 0.06) if rng.random() < 0.6 else (0.30, 0.03, 0.04), F32)
            img[:] = img * (1 - z[..., None]) + z[..., None] * col
            sc.G = np.maximum(sc.G, 0.9 * z)
        if rng.random() < 0.5:                                 # a drip running downwards
            x = mx + rng.normal(0, 0.3 * mr)
            lm = _line_mask(n, [(_walk(rng, x, my + 0.8 * mr, math.pi / 2, 5, 0.25 * mr + 1, 0.1), 1.5 * w)])
            img[:] = img * (1 - lm[..., None]) + lm[..., None] * np.array((0.55, 0.04, 0.06), F32)


def _shade(sc: Scene, rng) -> None:
    hy, hx = np.gradient(sc.H)
    light = np.array((rng.uniform(-0.6, -0.3), rng.uniform(-0.65, -0.35), 0.7), F32)
    light /= np.linalg.norm(light)
    norm = np.sqrt(hx * hx + hy * hy + 1)
    lam = (-hx * light[0] - hy * light[1] + light[2]) / norm
    shade = np.clip(1 + 0.6 * (lam / light[2] - 1), 0.45, 1.35)
    half = light + np.array((0, 0, 1), F32)
    half /= np.linalg.norm(half)
    spec = np.clip((-hx * half[0] - hy * half[1] + half[2]) / norm, 0, 1) ** 24
    sc.img = sc.img * shade[..., None] + (0.55 * spec * sc.G)[..., None]


# --------------------------------------------------------------------------- clutter

def _clutter(sc: Scene, spec: dict, rng, mm_per_px: float) -> list[str]:
    n, S, pad, flags = sc.N, sc.S, sc.pad, []
    img = sc.img
    lo, hi = HAIR_BY_SITE.get(spec["body_site"], (0, 5))
    if spec["body_site"] == "scalp" or rng.random() < 0.7:
        k = int(rng.integers(lo, hi + 1))
        if k:
            flags.append("hair")
            t = spec["skin_type"]
            colour = np.array((0.93, 0.8, 0.55) if t <= 2 and rng.random() < 0.25 else
                              (0.6, 0.58, 0.55) if rng.random() < 0.1 else (0.12, 0.08, 0.06), F32)
            polys = []
            base_angle = rng.uniform(0, math.pi)
            for _ in range(k):
                x, y = rng.uniform(0, n, 2)
                ang = base_angle + rng.normal(0, 0.5)
                L = rng.uniform(0.2, 0.9) * n
                bend = rng.normal(0, 0.15) * L
                pts = []
                for s in np.linspace(0, 1, 9):
                    off = bend * 4 * s * (1 - s)
                    pts.append((x + s * L * math.cos(ang) - off * math.sin(ang),
                                y + s * L * math.sin(ang) + off * math.cos(ang)))
                polys.append((pts, rng.uniform(0.5, 1.0) * max(0.6, S / 128)))
            hm = _line_mask(n, polys) * 0.85
            img[:] = img * (1 - hm[..., None]) + hm[..., None] * colour
    if rng.random() < 0.15:
        flags.append("clothing")
        yy, xx = np.mgrid[0:n, 0:n].astype(F32)
        side = int(rng.integers(4))
        coord = [xx, yy, n - 1 - xx, n - 1 - yy][side]
        along = [yy, xx, yy, xx][side]
        edge = pad + S * rng.uniform(0.08, 0.25) + S * 0.04 * np.sin(along / n * rng.uniform(2, 6) + rng.uniform(0, 6))
        z = _smoothstep((edge - coord) / 1.5 + 0.5)
        cloth = np.array([(0.15, 0.22, 0.45), (0.9, 0.9, 0.92), (0.08, 0.08, 0.09), (0.55, 0.56, 0.58),
                          (0.6, 0.12, 0.14), (0.2, 0.4, 0.25)][int(rng.integers(6))], F32)
        weave = 1 + 0.08 * np.sin(xx * 2.2) * np.sin(yy * 2.2) + 0.04 * sc.full("hi")
        shadow = 1 - 0.3 * np.exp(-np.clip(coord - edge, 0, None) / 2.5) * (1 - z)
        img[:] = (img * shadow[..., None]) * (1 - z[..., None]) + (cloth * weave[..., None]) * z[..., None]
    if rng.random() < 0.2:
        flags.append("ruler")
        _ruler(sc, rng, mm_per_px)
    yy, xx = np.ogrid[0:n, 0:n]
    light = np.ones((n, n), F32)
    g = rng.uniform(0, 0.15)
    a = rng.uniform(0, 2 * math.pi)
    light *= (1 + g * ((xx - n / 2) * math.cos(a) + (yy - n / 2) * math.sin(a)) / n).astype(F32)
    if rng.random() < 0.4:
        flags.append("vignette")
        v = rng.uniform(0.1, 0.35)
        light *= (1 - v * ((xx - n / 2) ** 2 + (yy - n / 2) ** 2) / (n * n / 2)).astype(F32)
    if rng.random() < 0.25:
        flags.append("shadow")
        a = rng.uniform(0, 2 * math.pi)
        proj = (xx - n / 2) * math.cos(a) + (yy - n / 2) * math.sin(a) - rng.uniform(0.1, 0.4) * n
        light *= (1 - rng.uniform(0.2, 0.45) * _smoothstep(proj / (0.12 * n) + 0.5)).astype(F32)
    sc.img = img * light[..., None]
    return flags


def _ruler(sc: Scene, rng, mm_per_px: float) -> None:
    n, S, pad = sc.N, sc.S, sc.pad
    width = int(round(S * rng.uniform(0.09, 0.13)))
    side = int(rng.integers(4))
    strip = np.empty((width, n, 3), F32)
    strip[:] = np.array([(0.96, 0.96, 0.94), (0.95, 0.9, 0.6), (0.75, 0.78, 0.8)][int(rng.integers(3))], F32)
    px_per_mm = 1.0 / mm_per_px
    unit = 1 if px_per_mm >= 2.5 else (2 if px_per_mm >= 1.25 else 5)
    start = rng.uniform(0, px_per_mm * 10)
    k = 0
    while True:
        x = start + k * unit * px_per_mm
        if x >= n:
            break
        mm = k * unit
        length = 0.75 if mm % 10 == 0 else (0.5 if mm % 5 == 0 else 0.3)
        xi = int(round(x))
        if xi < n:
            strip[: max(1, int(length * width)), xi] = (0.08, 0.08, 0.08)
        k += 1
    strip[-1:] = strip[-1:] * 0.6
    edge = pad + int(rng.integers(0, max(1, S // 20)))
    if side == 0:
        sc.img[edge:edge + width] = strip
    elif side == 1:
        sc.img[n - edge - width:n - edge] = strip[::-1]
    elif side == 2:
        sc.img[:, edge:edge + width] = strip.transpose(1, 0, 2)
    else:
        sc.img[:, n - edge - width:n - edge] = strip.transpose(1, 0, 2)[:, ::-1]


# --------------------------------------------------------------------------- entry point

def render(spec: dict, size: int, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Render one image (RGB, size x size) for ``spec``; returns (image, metadata incl. image_quality)."""
    sc = Scene(size, rng)
    t = spec["skin_type"]
    _paint_skin(sc, t, spec["body_site"], rng)
    fov = rng.uniform(*FOV_MM[spec["size_class"]])
    mm_per_px = fov / size
    r_main = max(1.6, rng.uniform(*DIAMETER_MM[spec["size_class"]]) / 2 / mm_per_px)
    lesions = _plan_lesions(spec, sc, rng, r_main)
    fills = [colour_rgb(c, sc.skin, t) for c in spec["fill"]]
    for les in lesions[1:] + lesions[:1]:                     # main lesion on top
        les["shape_main"] = les["main"] or les["morph"] == spec["main_morph"]
        own_shape = spec["shape"] if les["shape_main"] or les["morph"] not in SATELLITE else "round"
        les["shape"] = own_shape
        _draw_lesion(sc, les, spec, fills, rng)
    _features(sc, spec, lesions[0], rng)
    _shade(sc, rng)
    flags = _clutter(sc, spec, rng, mm_per_px)
    exposure = rng.uniform(0.88, 1.12)
    bad_exposure = rng.random() < 0.05
    if bad_exposure:
        exposure = rng.uniform(0.5, 0.62) if rng.random() < 0.5 else rng.uniform(1.3, 1.45)
        flags.append("exposure")
    tint = (1 + rng.normal(0, 0.02, 3)).astype(F32)
    img = sc.img * F32(exposure) * tint
    img = img + rng.normal(0, rng.uniform(0.004, 0.018), img.shape).astype(F32)
    pil = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")
    angle = float(rng.uniform(-8, 8))
    pil = pil.rotate(angle, resample=Image.BICUBIC)
    pad = sc.pad
    pil = pil.crop((pad, pad, pad + size, pad + size))
    u = rng.random()
    blur = 0.0
    if u < 0.08:
        blur = rng.uniform(1.8, 3.0) * size / 128
        flags.append("heavy_blur")
    elif u < 0.28:
        blur = rng.uniform(0.5, 1.0) * size / 128
        flags.append("blur")
    if blur:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
    if "heavy_blur" in flags or bad_exposure:
        quality = "poor"
    elif "blur" in flags or "clothing" in flags or ("shadow" in flags and "vignette" in flags) \
            or ("hair" in flags and spec["body_site"] == "scalp"):
        quality = "acceptable"
    else:
        quality = "good"
    main = lesions[0]
    c = (sc.N - 1) / 2.0
    th = math.radians(angle)
    dx, dy = main["cx"] - c, main["cy"] - c
    cx = c + dx * math.cos(th) + dy * math.sin(th) - pad
    cy = c - dx * math.sin(th) + dy * math.cos(th) - pad
    meta = dict(lesion_cx=round(cx, 2), lesion_cy=round(cy, 2), lesion_radius_px=round(main["r"], 2),
                n_lesions=len(lesions), mm_per_px=round(mm_per_px, 4), rotation_deg=round(angle, 2),
                blur_sigma=round(blur, 2), clutter=sorted(flags), image_quality=quality)
    return pil, meta
