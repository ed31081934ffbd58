"""Deterministic synthetic cases: two arches in occlusion, buccal bite scans, truth.

The arches are built in an *occlusion frame* (millimetres; x to the patient's
right, y anterior, z superior, occlusal plane near z = 0) as open surfaces over a
grid ``(s, v)``: ``s`` runs along the arch curve from the left to the right
posterior end, ``v`` across the arch from the lingual gingiva over the crown to
the buccal gingiva. Crowns carry cusps, a central fissure and interproximal
embrasures; a gingiva band with a scalloped margin runs below them.

The upper arch's occlusal surface is built on the lower one plus a designed
vertical gap field, so that the arches meet at two contact spots per posterior
tooth (16 in all, 0-0.06 mm apart), three of which penetrate slightly
(0.03-0.08 mm, as an uncompensated bite does); everywhere else they are apart.
The upper's buccal cusps hang over the lower's buccal wall (up to 1.3 mm below
its edge, at least 0.2 mm from it), and its incisors over the lower incisors'
labial face. The occlusion holds between the meshes as built, not only between
the analytic surfaces: both arches are grids over the same sections of the arch,
compared there (see ``build_arches``).

Bite scans are made like a scanner makes them: rays from the buccal side hit the
two arches in occlusion; hits get normal noise, holes, and are re-triangulated
as a range image. Every file is then put in its own random pose; the truth maps
each file's coordinates into the first bite scan's frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner.io import write_ply, write_stl
from mesial.aligner.rangescan import BuccalPath
from mesial.aligner.transforms import invert, random_rigid, transform_points

FloatArray = NDArray[np.float64]

# (tooth type, mesiodistal width mm), from the midline to the back, one side.
LOWER_TEETH: tuple[tuple[str, float], ...] = (
    ("incisor", 5.3), ("incisor", 5.9), ("canine", 6.9), ("premolar", 7.0),
    ("premolar", 7.2), ("molar", 11.0), ("molar", 10.3),
)  # fmt: skip
UPPER_TEETH: tuple[tuple[str, float], ...] = (
    ("incisor", 8.6), ("incisor", 6.6), ("canine", 7.6), ("premolar", 7.0),
    ("premolar", 6.6), ("molar", 10.2), ("molar", 9.2),
)  # fmt: skip
# buccolingual crown width (mm) and crown height (mm) by type
CROWN_WIDTH = {"incisor": 6.0, "canine": 7.4, "premolar": 7.8, "molar": 10.2}
CROWN_HEIGHT = {"incisor": 9.0, "canine": 10.0, "premolar": 8.0, "molar": 7.0}
POSTERIOR = {"incisor": 0.0, "canine": 0.4, "premolar": 1.0, "molar": 1.0}
GINGIVA_DEPTH_MM = 15.0  # how far the gingiva band reaches from the occlusal plane
ELLIPSE_MM = (23.5, 38.0)  # arch curve half-width and depth
# Profile parameter v at the joints: lingual gingiva | lingual wall | occlusal | buccal wall | buccal gingiva.
PROFILE_KNOTS = (0.0, 0.14, 0.30, 0.70, 0.86, 1.0)
# Outside the designed occlusal table the upper keeps at least this distance (mm) from
# the lower: its buccal cusps hang over the lower's buccal wall without touching it.
CLEARANCE_MM = 0.2
OVERHANG_MM = 1.3  # how far the upper's buccal cusps reach below the lower's buccal edge, at most
SPOT_SIGMA_MM = 0.7  # radius scale of a designed contact spot (a flat-bottomed dip of the gap field)
MIN_WALL_MM = 1.5  # least height of a crown wall between the occlusal edge and the gingival margin


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``vertices (n, 3)`` float mm, ``faces (m, 3)`` int."""

    vertices: FloatArray
    faces: NDArray[np.int64]


@dataclass(frozen=True)
class SampleCase:
    """One synthetic case.

    Attributes
    ----------
    upper, lower : Mesh
        Arches in their own (random) file frames.
    bites : tuple of Mesh
        One or two buccal bite scans, each in its own file frame.
    truth : dict of str -> (4, 4) float
        ``file_to_bite`` transforms for ``upper``, ``lower``, ``bite``, ``bite2``:
        map a file's coordinates into the first bite scan's frame.
    occlusion_to_bite : (4, 4) float
        Maps the occlusion frame (x right, y anterior, z superior) to the bite frame.
    seed, noise_mm : int, float
    """

    upper: Mesh
    lower: Mesh
    bites: tuple[Mesh, ...]
    truth: dict[str, FloatArray]
    occlusion_to_bite: FloatArray
    seed: int
    noise_mm: float


class _Arch:
    """Arch curve, tooth layouts and designed gap field shared by both arches (arc length ``s`` in mm)."""

    def __init__(self, rng: np.random.Generator) -> None:
        a, b = ELLIPSE_MM
        phi = np.linspace(-2.2, 2.2, 20001)
        dx, dy = a * np.cos(phi), -b * np.sin(phi)
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(dx, dy)[1:] * np.diff(phi))])
        arc -= np.interp(0.0, phi, arc)
        half = sum(w for _, w in LOWER_TEETH) + 1.0
        self.length = 2 * half
        self._arc, self._phi, self._half = arc, phi, half
        self.lower = self._layout(LOWER_TEETH, half, rng)
        self.upper = self._layout(UPPER_TEETH, half, rng)
        self.gap = _GapField(self.lower, rng)

    @staticmethod
    def _layout(teeth: tuple[tuple[str, float], ...], half: float, rng: np.random.Generator) -> list[dict[str, Any]]:
        widths = np.array([w for _, w in teeth])
        widths *= (half - 1.0) / widths.sum()
        layout: list[dict[str, Any]] = []
        for side in (-1, 1):
            edge = 0.0
            for (kind, _), width in zip(teeth, widths, strict=True):
                centre = half + side * (edge + width / 2)
                layout.append(
                    {
                        "kind": kind,
                        "centre": centre,
                        "length": width,
                        "side": side,
                        "scale": 1.0 + 0.05 * rng.standard_normal(),
                        "cusp_heights": 1.0 + 0.2 * rng.standard_normal(6),
                        "top": 0.15 * rng.standard_normal(),
                    }
                )
                edge += width
        layout.sort(key=lambda t: t["centre"])
        return layout

    def frame(self, s: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Curve points ``(k, 3)`` and unit buccal directions ``(k, 3)`` at arc lengths ``s``."""
        a, b = ELLIPSE_MM
        phi = np.interp(np.asarray(s) - self._half, self._arc, self._phi)
        point = np.stack([a * np.sin(phi), b * np.cos(phi), np.zeros_like(phi)], axis=-1)
        buccal = np.stack([b * np.sin(phi), a * np.cos(phi), np.zeros_like(phi)], axis=-1)
        buccal /= np.linalg.norm(buccal, axis=-1, keepdims=True)
        return point, buccal

    def boundaries(self, layout: list[dict[str, Any]]) -> FloatArray:
        edges = [t["centre"] + t["length"] / 2 for t in layout[:-1]]
        return np.array(edges)


def _interp_tooth(s: FloatArray, layout: list[dict[str, Any]], values: list[float]) -> FloatArray:
    centres = np.array([t["centre"] for t in layout])
    return np.asarray(np.interp(s, centres, np.array(values)), dtype=np.float64)


def _lower_occlusal(arch: _Arch, s: FloatArray, b: FloatArray) -> FloatArray:
    """Height (mm) of the lower occlusal surface at arch position ``s``, buccal offset ``b``."""
    layout = arch.lower
    width = _interp_tooth(s, layout, [CROWN_WIDTH[t["kind"]] * t["scale"] for t in layout])
    post = _interp_tooth(s, layout, [POSTERIOR[t["kind"]] for t in layout])
    top = _interp_tooth(s, layout, [t["top"] for t in layout])
    beta = np.clip(2 * b / width, -1.2, 1.2)
    h = top - 1.0 * post - 2.5 * (1 - post) * beta**2 - 1.2 * np.abs(beta) ** 6
    h -= 0.7 * post * np.exp(-((beta / 0.13) ** 2))  # central fissure
    for tooth in layout:
        length, kind, heights = tooth["length"], tooth["kind"], tooth["cusp_heights"]
        if kind == "molar":
            cusps = [(-0.3, 0.5), (0.0, 0.5), (0.3, 0.5), (-0.22, -0.5), (0.22, -0.5)]
            radius = 0.2 * length
        elif kind == "premolar":
            cusps, radius = [(0.0, 0.45), (0.0, -0.45)], 0.28 * length
        elif kind == "canine":
            cusps, radius = [(0.0, 0.1)], 0.35 * length
        else:
            continue
        near = np.abs(s - tooth["centre"]) < 2.5 * length
        for (frac, cusp_beta), height in zip(cusps, heights, strict=False):
            ds = s[near] - (tooth["centre"] + frac * length)
            db = b[near] - cusp_beta * width[near] / 2
            h[near] += height * np.exp(-(ds**2 + db**2) / (2 * radius**2))
    for edge in arch.boundaries(layout):
        h -= 2.2 * np.exp(-(((s - edge) / 0.8) ** 2))  # interproximal embrasure
    return h


class _GapField:
    """Designed vertical gap (mm) between the arches as a function of ``(s, b)``.

    Minima sit at two contact spots per posterior tooth, exactly at their
    targets: three are negative (a small penetration, -0.08..-0.03 mm) and the
    rest between 0 and 0.06 mm. Elsewhere the gap is 0.25-0.65 mm on the
    posterior teeth and 0.6 mm more on the anterior ones.

    Attributes
    ----------
    spots : (k, 2) float
        ``(s, b)`` of the contact spots, millimetres.
    targets : (k,) float
        The gap at each spot, millimetres.
    """

    def __init__(self, layout: list[dict[str, Any]], rng: np.random.Generator) -> None:
        self._layout = layout
        self._phase = rng.uniform(0, 2 * np.pi, 2)
        spots = []
        for tooth in layout:
            if tooth["kind"] in ("premolar", "molar"):
                width = CROWN_WIDTH[tooth["kind"]] * tooth["scale"]
                for beta in (-0.35, 0.25):
                    ds = rng.uniform(-0.25, 0.25) * tooth["length"]
                    spots.append((tooth["centre"] + ds, beta * width / 2))
        self.spots = np.array(spots)
        self.targets = rng.uniform(0.0, 0.06, len(spots))
        self.targets[rng.choice(len(spots), 3, replace=False)] = -rng.uniform(0.03, 0.08, 3)

    def _base(self, s: FloatArray, b: FloatArray) -> FloatArray:
        post = _interp_tooth(s, self._layout, [POSTERIOR[t["kind"]] for t in self._layout])
        wave = np.sin(2 * np.pi * s / 13.0 + self._phase[0]) * np.cos(2 * np.pi * b / 9.0 + self._phase[1])
        return np.asarray(0.45 + 0.2 * wave + 0.6 * (1 - post), dtype=np.float64)

    def __call__(self, s: FloatArray, b: FloatArray) -> FloatArray:
        value = self._base(s, b)
        for (s0, b0), target in zip(self.spots, self.targets, strict=True):
            # blended towards the target rather than dipped by a fixed depth: the spot's
            # centre is then exactly at its target whatever the slope of the base and the
            # tails of the neighbouring spots, and the gap is negative only near a
            # negative spot (a dip would overshoot by up to 0.02 mm and bite through
            # at spots designed to just touch)
            # flat-bottomed (exp of r^4), as a wear facet: a small rigid correction of
            # the bite (see occlusion.optimise_bite) shrinks such a contact, not erases it
            near = (np.abs(s - s0) < 4 * SPOT_SIGMA_MM) & (np.abs(b - b0) < 4 * SPOT_SIGMA_MM)
            spread = ((s[near] - s0) ** 2 + (b[near] - b0) ** 2) / (2 * SPOT_SIGMA_MM**2)
            weight = np.exp(-(spread**2))
            value[near] = target + (value[near] - target) * (1 - weight)
        return value


def _envelope(b_line: FloatArray, z_line: FloatArray, b_query: FloatArray, radius: float) -> FloatArray:
    """Top of polylines dilated by a disk, per cross-section.

    Parameters
    ----------
    b_line, z_line : (c, k) float, millimetres
        One polyline per cross-section (a grid column), in its ``(b, z)`` plane.
    b_query : (c, q) float, millimetres
    radius : float, millimetres, >= 0
        Dilation radius (0: the polyline itself).

    Returns
    -------
    z : (c, q) float, millimetres
        Highest ``z`` at ``b_query`` of the points within ``radius`` of the
        polyline; ``-inf`` where none is.
    """
    top = np.full(b_query.shape, -np.inf)
    for start in range(0, len(b_query), 32):  # 32 columns at a time: (32, k, q) temporaries
        rows = slice(start, start + 32)
        q, r = b_query[rows, None, :], radius
        b, z = b_line[rows, :, None], z_line[rows, :, None]
        # the segments offset by the radius along their upward normal (the dilation's top
        # where it is tangent to a segment) ...
        db, dz = np.diff(b, axis=1), np.diff(z, axis=1)
        length = np.maximum(np.hypot(db, dz), 1e-12)
        up = np.where(db >= 0, 1.0, -1.0) / length
        nb, nz = -dz * up, db * up
        b0, z0 = b[:, :-1] + r * nb, z[:, :-1] + r * nz
        b1, z1 = b[:, 1:] + r * nb, z[:, 1:] + r * nz
        span = b1 - b0
        on = (q - np.minimum(b0, b1) >= 0) & (np.maximum(b0, b1) - q >= 0) & (np.abs(span) > 1e-9)
        with np.errstate(divide="ignore", invalid="ignore"):
            along = np.where(on, z0 + (q - b0) * (z1 - z0) / np.where(on, span, 1.0), -np.inf)
        # ... and the disks around its vertices (the top between two tangents)
        room = r**2 - (q - b) ** 2
        disk = np.where(room >= 0, z + np.sqrt(np.maximum(room, 0.0)), -np.inf)
        top[rows] = np.maximum(along.max(axis=1), disk.max(axis=1))
    return top


def _dilated_top(lower: tuple[FloatArray, FloatArray], b_query: FloatArray, radius: float, ds: float) -> FloatArray:
    """Top of the lower mesh dilated by a ball, above points of the grid's sections.

    Both arches are grids over the same columns ``s``, and a column is a plane
    section of the arch (``s`` constant), so a mesh meets that plane in its
    column's polyline. The ball of ``radius`` around a point of one section
    meets the neighbouring sections (``ds`` apart) in smaller disks: the top
    is the highest over the point's own and the neighbouring sections.

    Parameters
    ----------
    lower : ((c, k), (c, k)) float, millimetres
        ``(b, z)`` of the lower's vertices by column.
    b_query : (c, q) float, millimetres
        Abscissae in each column's section.
    radius : float, millimetres
    ds : float
        Spacing of the columns (arc length, mm).

    Returns
    -------
    z : (c, q) float, millimetres
        ``-inf`` where the dilated lower is not below the point.
    """
    b_low, z_low = lower
    top = np.full(b_query.shape, -np.inf)
    reach = int(np.floor(radius / ds))
    for shift in range(-reach, reach + 1):
        own = slice(max(0, -shift), len(b_query) - max(0, shift))
        other = slice(max(0, shift), len(b_low) - max(0, -shift))
        disk = float(np.sqrt(radius**2 - (shift * ds) ** 2))
        top[own] = np.maximum(top[own], _envelope(b_low[other], z_low[other], b_query[own], disk))
    return top


def _running_min(values: FloatArray, half: int) -> FloatArray:
    """Smoothed lower bound of ``values (n,)``: never above any value within ``half`` samples.

    A running minimum over ``2 half + 1`` samples, averaged over ``half + 1``
    (each average only mixes minima of windows that contain the sample).
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    if half <= 0:
        return values
    low = minimum_filter1d(values, 2 * half + 1, mode="nearest")
    return np.asarray(uniform_filter1d(low, 2 * (half // 2) + 1, mode="nearest"), dtype=np.float64)


def _smoothstep(x: FloatArray) -> FloatArray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _grid_faces(n_s: int, n_v: int) -> NDArray[np.int64]:
    i, j = np.meshgrid(np.arange(n_s - 1), np.arange(n_v - 1), indexing="ij")
    a = (i * n_v + j).ravel()
    b, c, d = a + n_v, a + 1, a + n_v + 1
    return np.concatenate([np.stack([a, b, c], 1), np.stack([c, b, d], 1)]).astype(np.int64)


def _profile(
    v: FloatArray,
    b_edges: tuple[FloatArray, FloatArray],
    occlusal: Any,
    margin: FloatArray,
    gingiva_z: float,
) -> tuple[FloatArray, FloatArray]:
    """Cross-section (b, z) at parameters ``v`` in [0, 1] (lingual gingiva → buccal gingiva)."""
    b_ling, b_bucc = b_edges
    b = np.empty_like(v)
    z = np.empty_like(v)
    seg = np.clip(np.searchsorted(PROFILE_KNOTS, v, side="right") - 1, 0, 4)
    t = (v - np.take(PROFILE_KNOTS, seg)) / np.diff(PROFILE_KNOTS)[seg]
    z_ling = occlusal(b_ling)
    z_bucc = occlusal(b_bucc)
    # lingual gingiva: from the vestibule up/down to the margin, bulging out
    m = seg == 0
    b[m] = b_ling[m] - 1.6 + 1.3 * t[m] - 0.8 * np.sin(np.pi * t[m])
    z[m] = gingiva_z + (margin[m] - gingiva_z) * t[m]
    m = seg == 1  # lingual crown wall
    b[m] = b_ling[m] - 0.3 * (1 - t[m]) - 0.35 * np.sin(np.pi * t[m])
    z[m] = margin[m] + (z_ling[m] - margin[m]) * t[m]
    m = seg == 2  # occlusal surface
    b[m] = b_ling[m] + (b_bucc[m] - b_ling[m]) * t[m]
    z[m] = occlusal(b[m], m)
    m = seg == 3  # buccal crown wall
    b[m] = b_bucc[m] + 0.3 * t[m] + 0.35 * np.sin(np.pi * t[m])
    z[m] = z_bucc[m] + (margin[m] - z_bucc[m]) * t[m]
    m = seg == 4  # buccal gingiva
    b[m] = b_bucc[m] + 0.3 + 1.3 * t[m] + 0.8 * np.sin(np.pi * t[m])
    z[m] = margin[m] + (gingiva_z - margin[m]) * t[m]
    return b, z


def build_arches(seed: int, vertices: int = 150_000) -> tuple[Mesh, Mesh, _Arch]:
    """Both arches in occlusion, in the occlusion frame.

    Parameters
    ----------
    seed : int
    vertices : int
        Approximate vertex count of each arch (e.g. 150 000; 15 000 for tests).

    Returns
    -------
    upper, lower : Mesh
        Outward-facing open surfaces in millimetres.
    arch : _Arch
        The shared layout (for bite generation).
    """
    rng = np.random.default_rng(seed)
    arch = _Arch(rng)
    n_v = max(24, round(np.sqrt(vertices / 6.0)))
    n_s = max(60, vertices // n_v)
    s_line = np.linspace(0.5, arch.length - 0.5, n_s)
    v_line = np.linspace(0.0, 1.0, n_v)
    s, v = (x.ravel() for x in np.meshgrid(s_line, v_line, indexing="ij"))
    point, buccal = arch.frame(s)
    up = np.array([0.0, 0.0, 1.0])

    def width(layout: list[dict[str, Any]]) -> FloatArray:
        return _interp_tooth(s, layout, [CROWN_WIDTH[t["kind"]] * t["scale"] for t in layout])

    def margin(layout: list[dict[str, Any]], sign: float, edges: tuple[FloatArray, FloatArray]) -> FloatArray:
        height = _interp_tooth(s, layout, [CROWN_HEIGHT[t["kind"]] * t["scale"] for t in layout])
        papillae = sum(np.exp(-(((s - e) / 1.3) ** 2)) for e in arch.boundaries(layout))
        # at an embrasure the papilla would reach the dipped occlusal edge: the crown wall,
        # which bulges out 0.65 mm, would fold into a fin of no height
        crown = np.maximum(height - 1.0 - 2.0 * papillae, np.maximum(*(sign * e for e in edges)) + MIN_WALL_MM)
        return np.asarray(sign * crown, dtype=np.float64)

    # lower arch
    w_low = width(arch.lower)

    def lower_occ(bb: FloatArray, mask: NDArray[np.bool_] | None = None) -> FloatArray:
        return _lower_occlusal(arch, s if mask is None else s[mask], bb)

    lower_edges = (lower_occ(-w_low / 2), lower_occ(w_low / 2))
    b_low, z_low = _profile(
        v, (-w_low / 2, w_low / 2), lower_occ, margin(arch.lower, -1.0, lower_edges), -GINGIVA_DEPTH_MM
    )
    lower_vertices = point + b_low[:, None] * buccal + z_low[:, None] * up

    # upper arch: on the lower surface plus the gap; its buccal cusps hang outside
    gap = arch.gap
    upper_embrasure = sum(2.0 * np.exp(-(((s - e) / 0.6) ** 2)) for e in arch.boundaries(arch.upper))
    # The upper's occlusal table is the lower's shifted buccally by about 1.1 mm, by a whole
    # number of the lower's row steps (a fixed share of the crown width, so the shift
    # follows the width smoothly). Over the shared span the upper's vertices then stand
    # right above the lower's (same s and b) at the designed gap, and both grids are
    # triangulated alike: the designed gap holds between the meshes, not only between the
    # analytic surfaces (whose chords, at different b, differed by up to 0.07 mm at 20k vertices).
    row_share = 1.0 / (np.diff(PROFILE_KNOTS)[2] * (n_v - 1))  # one occlusal row's share of the width
    offset = max(1, round(1.1 / (9.0 * row_share))) * row_share * w_low
    b_ul, b_ub = -w_low / 2 + offset, w_low / 2 + offset
    hang = np.zeros_like(s)  # how far the buccal cusp reaches below the lower's buccal edge (mm)

    def dip(bb: FloatArray, wl: FloatArray, off: FloatArray) -> FloatArray:
        """0 -> 1 from 0.1 mm inside the lower's buccal edge to 0.2 mm before the upper's."""
        return _smoothstep((bb - wl / 2 + 0.1) / (off - 0.1))

    def upper_occ(bb: FloatArray, mask: NDArray[np.bool_] | None = None) -> FloatArray:
        ss = s if mask is None else s[mask]
        wl = w_low if mask is None else w_low[mask]
        emb = upper_embrasure if mask is None else upper_embrasure[mask]
        inside = np.clip(bb, -wl / 2, wl / 2)
        z = _lower_occlusal(arch, ss, inside) + gap(ss, inside) + emb
        z += 1.6 * (1 - _smoothstep((bb + wl / 2 - 1.2) / 1.0))  # rounded lingual edge
        # the buccal cusp, flat for its last 0.2 mm: it meets the buccal wall square (an
        # acute edge flips the sign of distances measured to the faces next to it)
        z -= (hang if mask is None else hang[mask]) * dip(bb, wl, offset if mask is None else offset[mask])
        return np.asarray(z, dtype=np.float64)

    # The buccal cusps hang down to OVERHANG_MM below the lower's buccal edge, less where
    # the lower's buccal wall is in the way: it bulges out 0.65 mm, and at embrasures it
    # is short (the papilla) and high. A fixed depth bit up to 0.6 mm into the lower's wall
    # there. Per column of the grid, the depth is the largest that keeps the cusp
    # CLEARANCE_MM from the lower mesh (exactly, on the columns' polylines: see
    # _dilated_top), then smoothed along the arch without ever exceeding it.
    grid = (n_s, n_v)
    ds = float(s_line[1] - s_line[0])
    buccal_rows = v_line >= PROFILE_KNOTS[2]  # the lower's occlusal table, buccal wall and gingiva
    lower_sections = (b_low.reshape(grid)[:, buccal_rows], z_low.reshape(grid)[:, buccal_rows])
    occ = (v >= PROFILE_KNOTS[2]) & (v < PROFILE_KNOTS[3])  # the upper's occlusal rows
    t = (v[occ] - PROFILE_KNOTS[2]) / (PROFILE_KNOTS[3] - PROFILE_KNOTS[2])
    b_occ = b_ul[occ] + (b_ub[occ] - b_ul[occ]) * t
    z_occ = upper_occ(b_occ, occ).reshape(n_s, -1)  # without the cusp (hang is still 0)
    dips = dip(b_occ, w_low[occ], offset[occ]).reshape(n_s, -1)
    b_occ = b_occ.reshape(n_s, -1)
    # (rows where the cusp has hardly begun to dip bound its depth poorly, and the table before
    # them keeps the designed gap: they are left out)
    rows = (dips > 0.25).any(axis=0)
    top = _dilated_top(lower_sections, b_occ[:, rows], CLEARANCE_MM, ds)
    allowed = np.where(dips[:, rows] > 0.25, (z_occ[:, rows] - top) / np.maximum(dips[:, rows], 0.25), np.inf)
    depth = _running_min(np.clip(allowed.min(axis=1), 0.0, OVERHANG_MM), round(0.5 / ds))
    hang[:] = np.repeat(depth, n_v)

    upper_edges = (upper_occ(b_ul), upper_occ(b_ub))
    b_up, z_up = _profile(v, (b_ul, b_ub), upper_occ, margin(arch.upper, 1.0, upper_edges), GINGIVA_DEPTH_MM)
    upper_vertices = point + b_up[:, None] * buccal + z_up[:, None] * up

    faces = _grid_faces(n_s, n_v)
    lower = Mesh(lower_vertices, _outward(lower_vertices, faces, up))
    upper = Mesh(upper_vertices, _outward(upper_vertices, faces, -up))
    return upper, lower, arch


def _outward(vertices: FloatArray, faces: NDArray[np.int64], occlusal_dir: FloatArray) -> NDArray[np.int64]:
    """Wind the grid so that the occlusal normals point along ``occlusal_dir``."""
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    if float((normals @ occlusal_dir).sum()) < 0:
        return faces[:, ::-1].copy()
    return faces


def scan_bite(
    upper: Mesh,
    lower: Mesh,
    arch: BuccalPath,
    s_range: tuple[float, float],
    rng: np.random.Generator,
    *,
    noise_mm: float = 0.02,
    spacing_mm: float = 0.15,
    z_range: tuple[float, float] = (-6.0, 6.0),
    holes: int = 5,
    depth_mm: float = 8.0,
) -> Mesh:
    """A buccal bite scan of both arches in occlusion, made with a virtual range scanner.

    Parameters
    ----------
    upper, lower : Mesh
        Arches in the occlusion frame.
    arch : _Arch
    s_range : (2,) float
        Arc-length interval along the arch covered by the scan, mm.
    rng : numpy Generator
    noise_mm : float
        Standard deviation of the scanner noise along the surface normal.
    spacing_mm : float
        Sampling pitch of the range image.
    z_range : (2,) float
        Heights covered, mm from the occlusal plane.
    holes : int
        Number of missing disks (0.8-2.5 mm radius).
    depth_mm : float
        Depth of field: hits farther than this inside the arch curve are not returned.

    Returns
    -------
    bite : Mesh
        In the occlusion frame, normals facing the scanner.
    """
    from mesial.aligner._o3d import open3d

    o3d = open3d()

    scene = o3d.t.geometry.RaycastingScene()
    for mesh in (upper, lower):
        scene.add_triangles(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    s_line = np.arange(s_range[0], s_range[1], spacing_mm)
    z_line = np.arange(z_range[0], z_range[1], spacing_mm)
    s, z = (x.ravel() for x in np.meshgrid(s_line, z_line, indexing="ij"))
    s = s + rng.uniform(-0.3, 0.3, s.shape) * spacing_mm
    z = z + rng.uniform(-0.3, 0.3, z.shape) * spacing_mm
    point, buccal = arch.frame(s)
    origins = point + 20.0 * buccal + z[:, None] * np.array([0.0, 0.0, 1.0])
    rays = np.hstack([origins, -buccal]).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = hit["t_hit"].numpy().astype(np.float64)
    normals = hit["primitive_normals"].numpy().astype(np.float64)
    valid = np.isfinite(t_hit)
    cos = np.einsum("ij,ij->i", normals, buccal)
    # grazing angles and surfaces facing away return nothing, as on a real scanner, and nothing
    # beyond its depth of field (a ray through a gap between teeth does not see the far side)
    valid &= (cos > 0.2) & (t_hit < 20.0 + depth_mm)
    for _ in range(holes):
        s0, z0 = rng.uniform(*s_range), rng.uniform(*z_range)
        radius = rng.uniform(0.8, 2.5)
        valid &= (s - s0) ** 2 + (z - z0) ** 2 > radius**2
    t_safe = np.where(np.isfinite(t_hit), t_hit, 0.0)
    points = origins - t_safe[:, None] * buccal
    facing = np.where((np.einsum("ij,ij->i", normals, buccal) < 0)[:, None], -normals, normals)
    points += rng.normal(0.0, noise_mm, len(points))[:, None] * facing
    faces = _grid_faces(len(s_line), len(z_line))
    corners = points[faces]
    edge = np.max(np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2), axis=1)
    keep = valid[faces].all(axis=1) & (edge < 4 * spacing_mm)
    faces = faces[keep]
    used = np.zeros(len(points), dtype=bool)
    used[faces] = True
    remap = np.cumsum(used) - 1
    vertices, faces = points[used], remap[faces]
    mid = len(s_line) // 2
    return Mesh(vertices, _outward(vertices, faces, arch.frame(np.array([s_line[mid]]))[1][0]))


def generate_case(
    seed: int,
    *,
    noise_mm: float = 0.02,
    one_sided: bool = False,
    vertices: int = 150_000,
    simulator: str = "strip",
) -> SampleCase:
    """A complete synthetic case in random poses with its ground truth.

    Parameters
    ----------
    seed : int
        Everything (shapes, contacts, noise, holes, poses) follows from it.
    noise_mm : float
        Bite scanner noise (standard deviation along the normal, mm).
    one_sided : bool
        One bite scan (right side) instead of two (right, then left).
    vertices : int
        Approximate vertex count per arch.
    simulator : str
        ``"strip"`` (:func:`scan_bite`: parallel rays, a rectangular cut) or
        ``"range"`` (:func:`mesial.aligner.rangescan.range_image_bite`: a swept
        perspective scanner, depth noise along the ray, an irregular cut).

    Returns
    -------
    case : SampleCase
    """
    if simulator not in ("strip", "range"):
        raise ValueError(f"simulator must be 'strip' or 'range', not {simulator!r}")
    upper, lower, arch = build_arches(seed, vertices)
    rng = np.random.default_rng([seed, 1])
    canine_r = next(t for t in arch.lower if t["kind"] == "canine" and t["side"] > 0)
    canine_l = next(t for t in arch.lower if t["kind"] == "canine" and t["side"] < 0)
    right = (canine_r["centre"] - 0.5 * canine_r["length"], arch.length - 1.5)
    left = (1.5, canine_l["centre"] + 0.5 * canine_l["length"])
    spacing = 0.15 if vertices >= 60_000 else 0.25
    ranges = [right] if one_sided else [right, left]
    if simulator == "range":
        from mesial.aligner.rangescan import range_image_bite

        arches = [(upper.vertices, upper.faces), (lower.vertices, lower.faces)]
        bites = [Mesh(*range_image_bite(arches, arch, r, rng, noise_mm=noise_mm, spacing_mm=spacing)) for r in ranges]
    else:
        bites = [scan_bite(upper, lower, arch, r, rng, noise_mm=noise_mm, spacing_mm=spacing) for r in ranges]
    # poses: file = pose @ occlusion
    poses = {name: random_rigid(rng, translation_mm=40.0) for name in ("upper", "lower", "bite", "bite2")}
    to_bite = poses["bite"]
    files = {
        "upper": Mesh(transform_points(upper.vertices, poses["upper"]), upper.faces),
        "lower": Mesh(transform_points(lower.vertices, poses["lower"]), lower.faces),
    }
    bite_files = [
        Mesh(transform_points(bite.vertices, poses[name]), bite.faces)
        for name, bite in zip(("bite", "bite2"), bites, strict=False)
    ]
    truth = {name: to_bite @ invert(poses[name]) for name in ("upper", "lower")}
    for name in ("bite", "bite2")[: len(bites)]:
        truth[name] = to_bite @ invert(poses[name])
    return SampleCase(files["upper"], files["lower"], tuple(bite_files), truth, to_bite, seed, noise_mm)


def write_case(case: SampleCase, out: str | Path, *, arch_format: str = "ply") -> dict[str, Path]:
    """Write a case: ``upper.<fmt>``, ``lower.<fmt>``, ``bite.stl`` [, ``bite2.stl``], ``truth.json``.

    Returns
    -------
    paths : dict of role -> Path
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for role, mesh in (("upper", case.upper), ("lower", case.lower)):
        paths[role] = out / f"{role}.{arch_format}"
        if arch_format == "ply":
            write_ply(paths[role], mesh.vertices, mesh.faces)
        else:
            write_stl(paths[role], mesh.vertices, mesh.faces)
    for role, mesh in zip(("bite", "bite2"), case.bites, strict=False):
        paths[role] = out / f"{role}.stl"
        write_stl(paths[role], mesh.vertices, mesh.faces)
    truth = {
        "schema": "mesial.samples.truth/1",
        "seed": case.seed,
        "noise_mm": case.noise_mm,
        "frame": "bite",
        "file_to_bite": {k: np.round(v, 12).tolist() for k, v in case.truth.items()},
        "occlusion_to_bite": np.round(case.occlusion_to_bite, 12).tolist(),
        "files": {k: p.name for k, p in paths.items()},
    }
    paths["truth"] = out / "truth.json"
    paths["truth"].write_text(json.dumps(truth, indent=2) + "\n")
    return paths
