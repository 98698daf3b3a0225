"""The five hemorrhage subtypes, drawn in head coordinates so each spans several slices.

- epidural: biconvex lens against the inner table (short arc, thick centre);
- subdural: crescent along the inner table (long arc, thin, flat profile);
- intraparenchymal: irregular blob in the brain with a dark oedema rim;
- intraventricular: blood layering in the dependent (occipital) part of a lateral ventricle,
  or a cast of the whole ventricle;
- subarachnoid: blood filling and widening sulci over the convexity, or the basal cisterns and
  Sylvian fissures.

Acute blood is +60 to +90 HU; about one lesion in five is subtle (+15 to +25 HU over brain).
On the first and last labelled slice of a lesion the contrast drops to 30-55 % (partial volume),
so those slices are ambiguous alone but clear next to their neighbours.

``hard=True`` (the site presets other than ``classic``) adds the bleeds readers miss: 2-3 mm
convexity subdurals, isodense subacute subdurals (+2 to +8 HU over brain), a little subarachnoid
blood in one or two sulci, small cortical contusions against the skull base and thinner epidurals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medseg.constants import SUBTYPES
from medseg.data.synthetic.anatomy import Head
from medseg.data.synthetic.fields import SmoothField

SUBTLE_FRACTION = 0.2
# Shares of the hard variants among a hard site's bleeds of each subtype.
HARD_SHARE = {"thin_epidural": 0.5, "thin_subdural": 0.35, "isodense_subdural": 0.25, "contusion": 0.35,
              "focal_subarachnoid": 0.45}
_MAX_TRIES = 12


@dataclass
class Lesion:
    subtype: str
    mask: np.ndarray     # bool [S, h, w] on the head's crop box
    subtle: bool
    contrast: float      # HU added over brain (subtle) or the blood HU (acute)


def _unit(rng: np.random.Generator, azimuth: tuple[float, float], elevation: tuple[float, float]) -> np.ndarray:
    """A direction in normalised head coordinates (u, v, w); azimuth 0 = left, pi/2 = back."""
    phi = rng.uniform(*azimuth) + (math.pi if rng.random() < 0.5 else 0.0)
    el = rng.uniform(*elevation)
    return np.array([math.cos(phi) * math.cos(el), math.sin(phi) * math.cos(el), math.sin(el)], np.float32)


def _angular_q(head: Head, direction: np.ndarray, half_angle: float) -> np.ndarray:
    """(1 - cos angle) / (1 - cos half_angle): ~ (angle / half_angle)**2 from ``direction``."""
    p = head.params
    cos = (head.X * (direction[0] / p.a) + head.Y * (direction[1] / p.b) + head.Z * (direction[2] / p.c)) \
        / np.maximum(head.r, 1e-3)
    return (1.0 - cos) / (1.0 - math.cos(half_angle))


def _extra_axial(head: Head, rng: np.random.Generator, epidural: bool, thin: bool = False) -> np.ndarray:
    if epidural:  # lens: short arc, up to 8-17 mm thick (5-9 when thin), thickness falls like 1 - q
        direction = _unit(rng, (-0.5, 0.5), (-0.05, 0.55))
        q = _angular_q(head, direction, rng.uniform(0.24, 0.36))
        thickness = rng.uniform(*((5.0, 9.0) if thin else (8.0, 17.0))) * (1.0 - q)
    else:  # crescent: long arc, 4-10 mm thick (2-3 mm when thin), flat profile
        direction = _unit(rng, (-0.9, 0.9), (0.0, 0.65))
        q = _angular_q(head, direction, rng.uniform(0.4, 0.7))
        thickness = rng.uniform(*((2.0, 3.0) if thin else (4.0, 10.0))) * np.power(np.clip(1.0 - q, 0.0, 1.0), 0.35)
    return head.cavity & (q < 1.0) & (head.inner < thickness)


def _intraparenchymal(head: Head, rng: np.random.Generator, field: np.ndarray,
                      contusion: bool = False) -> tuple[np.ndarray, np.ndarray]:
    p = head.params
    if contusion:  # small, against the floor of the anterior or middle cranial fossa
        centre = (rng.uniform(0.2, 0.6) * p.a * rng.choice([-1, 1]), rng.uniform(-0.75, -0.35) * p.b,
                  rng.uniform(-0.3, -0.12) * p.c)
        radius = rng.uniform(4.0, 8.0)
    else:
        centre = (rng.uniform(0.12, 0.5) * p.a * rng.choice([-1, 1]), rng.uniform(-0.5, 0.5) * p.b,
                  rng.uniform(-0.1, 0.5) * p.c)
        radius = rng.uniform(7.0, 18.0)
    dist = np.sqrt((head.X - centre[0]) ** 2 + (head.Y - centre[1]) ** 2 + ((head.Z - centre[2]) * 0.8) ** 2)
    shape = dist / radius + 0.22 * field
    blob = (shape < 1.0) & head.cavity & ~head.ventricles
    rim = (shape >= 1.0) & (shape < 1.0 + rng.uniform(3.0, 6.0) / radius) & head.parenchyma
    return blob, rim


def _intraventricular(head: Head, rng: np.random.Generator) -> np.ndarray:
    p = head.params
    side = rng.choice(["left", "right", "both"])
    region = head.ventricles.copy()
    if side != "both":
        region &= (head.X < 0) if side == "left" else (head.X > 0)
    if rng.random() < 0.7:  # layering in the dependent occipital horn
        region &= head.Y > 0.02 * p.b + rng.uniform(0.0, 18.0)
    return region


def _subarachnoid(head: Head, rng: np.random.Generator, focal: bool = False) -> np.ndarray:
    p = head.params
    if focal or rng.random() < 0.5:  # convexity: widened sulci near a surface point (one or two when focal)
        direction = _unit(rng, (-0.9, 0.9), (0.0, 0.6))
        q = _angular_q(head, direction, rng.uniform(*((0.12, 0.2) if focal else (0.3, 0.55))))
        depth = head.inner - p.csf_mm
        band = (0.25 if focal else 0.42) * (1.0 - 0.5 * depth / p.sulcal_depth)
        return head.cavity & (q < 1.0) & (depth < p.sulcal_depth) & (np.abs(head.sulcal_field) < band)
    # basal: cisterns, Sylvian fissures and the nearby sulci over a limited height
    low, high = rng.uniform(-0.45, -0.3) * p.c, rng.uniform(-0.15, 0.1) * p.c
    return (head.cisterns | head.sulci) & (head.Z > low) & (head.Z < high)


def _fade(mask: np.ndarray, min_pixels: int, rng: np.random.Generator) -> np.ndarray:
    """Per-slice contrast factor: reduced on the first and last labelled slice of the lesion."""
    factor = np.ones(mask.shape[0], np.float32)
    labelled = np.flatnonzero(mask.sum(axis=(1, 2)) >= min_pixels)
    if len(labelled) >= 3:
        factor[labelled[0]] = rng.uniform(0.3, 0.55)
        factor[labelled[-1]] = rng.uniform(0.3, 0.55)
    return factor


def add_lesions(head: Head, subtypes: tuple[str, ...], rng: np.random.Generator, min_pixels: int,
                hard: bool = False) -> list[Lesion]:
    """Paint one lesion per subtype into ``head.hu`` (in place); ``hard`` adds the hard variants.

    A placement is redrawn (up to a few times) until it labels at least two slices (one in very
    short test series); labels always follow the final masks, so a rare miss is still truthful.
    """
    size = head.hu.shape[-1]
    z = head.positions
    blob_field = SmoothField(rng, size * head.pixel_mm, float(z.min()), float(z.max()), 7.0).sample(size, z, head.box)
    r0, r1, c0, c1 = head.box
    hu = head.hu[:, r0:r1, c0:c1]  # a view: painting it paints the frame
    brain_level = 0.5 * (head.params.grey_hu + head.params.white_hu)
    want = 2 if len(z) >= 12 else 1
    lesions: list[Lesion] = []
    for subtype in subtypes:
        rim = None
        # Hard variant of this lesion (drawn only when hard, so the classic stream is unchanged).
        variant = float(rng.random()) if hard else 1.0
        for _ in range(_MAX_TRIES):
            if subtype in ("epidural", "subdural"):
                mask = _extra_axial(head, rng, subtype == "epidural", thin=variant < HARD_SHARE[f"thin_{subtype}"])
            elif subtype == "intraparenchymal":
                mask, rim = _intraparenchymal(head, rng, blob_field, contusion=variant < HARD_SHARE["contusion"])
            elif subtype == "intraventricular":
                mask = _intraventricular(head, rng)
            elif subtype == "subarachnoid":
                mask = _subarachnoid(head, rng, focal=variant < HARD_SHARE["focal_subarachnoid"])
            else:
                raise ValueError(f"unknown hemorrhage subtype {subtype!r}; expected one of {SUBTYPES}")
            if int(np.count_nonzero(mask.sum(axis=(1, 2)) >= min_pixels)) >= want:
                break
        subtle = bool(rng.random() < SUBTLE_FRACTION)
        contrast = float(rng.uniform(15.0, 25.0) if subtle else rng.uniform(60.0, 90.0))
        thin = HARD_SHARE["thin_subdural"]
        if hard and subtype == "subdural" and thin <= variant < thin + HARD_SHARE["isodense_subdural"]:  # subacute
            subtle, contrast = True, float(rng.uniform(2.0, 8.0))
        target = np.float32(brain_level + contrast) if subtle else np.float32(contrast)
        fade = _fade(mask, min_pixels, rng)[:, None, None]
        texture = rng.normal(0.0, 2.0, size=1)[0] * blob_field
        blood = hu + fade * (target + texture - hu)
        np.copyto(hu, blood, where=mask)
        if rim is not None:
            np.copyto(hu, hu - np.float32(8.0), where=rim & ~mask)
        lesions.append(Lesion(subtype=subtype, mask=mask, subtle=subtle, contrast=contrast))
    return lesions
