"""Validation and cleaning of scans: everything is checked before any work.

A :class:`Scan` is what the rest of the aligner accepts: finite millimetre
coordinates of a plausible dental size, no degenerate or duplicate triangles, no
unreferenced vertex, unit vertex normals (pointing out of the teeth when loaded with
``orient``, as the pipeline loads the arches; a bite keeps its file's winding); an upper
or lower arch also has the shape of one (:func:`mesial.common.meshformat.check_arch_shape`).
The checks that refuse a file are those of :mod:`mesial.common.meshformat`, the same
the API applies to an upload; this module cleans what passed them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._clean import corner_sums, cross_products, face_census
from mesial.aligner._features import first_occurrences
from mesial.aligner._icp import SurfaceTarget, raycasting_scene
from mesial.aligner.errors import EmptyScan, InvalidScanShape, ScanInputError
from mesial.aligner.io import RawMesh, read_mesh
from mesial.aligner.transforms import lengths, unit
from mesial.aligner.units import unit_conversion
from mesial.common.meshformat import DEGENERATE_AREA_MM2, check_arrays

if TYPE_CHECKING:
    from mesial.aligner._prefetch import FilePrefetch

ARCH_ROLES = frozenset({"upper", "lower"})


@dataclass(frozen=True)
class CleaningReport:
    """What cleaning removed or changed (counts)."""

    input_vertices: int
    input_triangles: int
    degenerate_triangles: int
    duplicate_triangles: int
    unreferenced_vertices: int
    normals_flipped: bool
    scale_factor: float

    def as_dict(self) -> dict[str, int | float | bool]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Scan:
    """A validated, cleaned triangle mesh in millimetres.

    Attributes
    ----------
    role : str
        ``"upper"``, ``"lower"``, ``"bite"``, ``"bite2"`` (used in messages).
    vertices : (n, 3) float64, millimetres
    faces : (m, 3) int64
    vertex_normals : (n, 3) float64
        Unit, area-weighted; pointing out of the surface when oriented (``orient``), else
        as the file's winding makes them.
    sha256 : str
        Hex SHA-256 of the input file ("" for arrays).
    file_format : str
    cleaning : CleaningReport
    """

    role: str
    vertices: NDArray[np.float64]
    faces: NDArray[np.int64]
    vertex_normals: NDArray[np.float64]
    sha256: str
    file_format: str
    cleaning: CleaningReport = field(repr=False)
    # search structures built once per scan and shared by every stage (see surface())
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def surface(self) -> SurfaceTarget:
        """Exact closest-point queries on this scan, in its own frame (built once, then shared)."""
        if "surface" not in self._cache:
            # validation's ray-casting scene when it built one, else one built when a query first needs it
            scene = self._cache.get("scene")
            self._cache["surface"] = SurfaceTarget.of_mesh(self.vertices, self.faces, scene, self.vertex_normals)
        surface: SurfaceTarget = self._cache["surface"]
        return surface

    def scene(self) -> Any:
        """Ray-casting and closest-point BVH of this scan in its own frame (:class:`._meshquery.MeshQuery`;
        one, shared by validation and the closest-point queries: built once)."""
        return self.surface().scene

    @property
    def extent_mm(self) -> float:
        """Bounding-box diagonal in millimetres."""
        return float(np.linalg.norm(np.ptp(self.vertices, axis=0)))


def load_scan(
    path: str | Path,
    role: str,
    *,
    max_bytes: int,
    max_triangles: int,
    unit: str | None = None,
    orient: bool = True,
    prefetched: FilePrefetch | None = None,
) -> Scan:
    """Read, validate and clean one scan file.

    Parameters
    ----------
    path : str or Path
        STL (binary or ASCII), PLY or OBJ.
    role : str
        Name used in error messages (``"upper"``, ``"lower"``, ``"bite"``).
    max_bytes, max_triangles : int
        Limits, checked before the payload is read where the format allows.
    unit : str, optional
        The file's length unit when it is not millimetres (``"m"``, ``"in"``,
        ``"cm"``); the scan is then rescaled. Without it a scan of implausible
        size is refused with the unit it was probably written in.
    orient : bool
        Flip the winding when the normals clearly point into the teeth.
    prefetched : FilePrefetch, optional
        The file's bytes and SHA-256 when already read (see :func:`~.io.read_mesh`).

    Returns
    -------
    scan : Scan

    Raises
    ------
    ScanInputError
        For the reasons of :mod:`mesial.common.meshformat` (format, grammar with the
        line, limits, geometry, and for ``"upper"``/``"lower"`` the shape of an arch).
    """
    raw = read_mesh(
        path,
        max_bytes=max_bytes,
        max_triangles=max_triangles,
        unit=unit,
        role=role,
        arch=role in ARCH_ROLES,
        prefetched=prefetched,
    )
    return clean_mesh(raw, role, unit=unit, orient=orient)


def scan_from_arrays(
    vertices: NDArray[np.float64],
    faces: NDArray[np.int64],
    role: str,
    *,
    unit: str | None = None,
    orient: bool = True,
) -> Scan:
    """Validate and clean a mesh given as arrays (``(n, 3)`` float mm, ``(m, 3)`` int)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise InvalidScanShape(f"{role} vertices must be (n, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise InvalidScanShape(f"{role} faces must be (m, 3) integers, got {faces.shape} {faces.dtype}")
    faces = faces.astype(np.int64)
    try:
        check_arrays(vertices, faces, unit=unit, arch=role in ARCH_ROLES)
    except ScanInputError as exc:
        exc.role = role
        raise
    return clean_mesh(RawMesh(vertices, faces, "arrays", "", 0), role, unit=unit, orient=orient)


def clean_mesh(raw: RawMesh, role: str, *, unit: str | None = None, orient: bool = True) -> Scan:
    """Clean a checked mesh (see :class:`Scan` for the guarantees).

    ``raw`` has passed :mod:`mesial.common.meshformat`'s checks (:func:`read_mesh`
    and :func:`scan_from_arrays` apply them): at least one triangle with an area,
    indices in range, finite coordinates of a dental size, an arch's shape.
    """
    vertices, faces = raw.vertices, raw.faces

    # degenerate: a repeated corner or (near) zero area; duplicate: the same three vertices, whatever the
    # order or winding (one integer key per triangle)
    cross = face_cross_products(vertices, faces)  # kept for the normals
    degenerate, key, every_vertex_used = _census(faces, len(vertices), cross)
    if degenerate.any():  # (the usual scan has none: no copies then)
        faces, cross = faces[~degenerate], cross[~degenerate]
    if key is not None:
        # a plain sort tells whether any key repeats (the usual scan has none): the slower
        # stable argsort that picks the first of each is run only then
        ordered = np.sort(key)
        keep = first_occurrences(key) if (ordered[1:] == ordered[:-1]).any() else np.arange(len(faces))
    else:
        _, keep = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    duplicates = len(faces) - len(keep)
    if duplicates:
        keep = np.sort(keep)
        faces, cross = faces[keep], cross[keep]
    if len(faces) == 0:
        raise EmptyScan("every triangle is degenerate", role)
    # unreferenced vertices
    used = np.ones(len(vertices), dtype=bool)
    if not every_vertex_used:
        used[:] = False
        used[faces] = True
    if not used.all():
        remap = np.cumsum(used) - 1
        vertices = vertices[used]
        faces = remap[faces]

    scale = 1.0
    if unit is not None:
        scale = unit_conversion(unit, "mm")
        vertices = vertices * scale

    normals = vertex_normals(vertices, faces, face_normals=cross)  # a uniform rescale keeps the directions
    flipped = False
    cache: dict[str, Any] = {}
    if orient:
        scene = raycasting_scene(vertices, faces)
        if orientation_is_inward(vertices, faces, normals, scene=scene):
            faces = faces[:, ::-1].copy()
            normals = -normals
            flipped = True
        else:
            cache["scene"] = scene  # the same triangles, same winding: reused for closest points
    report = CleaningReport(
        input_vertices=len(raw.vertices),
        input_triangles=len(raw.faces),
        degenerate_triangles=int(degenerate.sum()),
        duplicate_triangles=int(duplicates),
        unreferenced_vertices=int((~used).sum()),
        normals_flipped=flipped,
        scale_factor=scale,
    )
    return Scan(role, vertices, faces.astype(np.int64, copy=False), normals, raw.sha256, raw.file_format, report, cache)


def _census(
    faces: NDArray[np.int64], n: int, cross: NDArray[np.float64]
) -> tuple[NDArray[np.bool_], NDArray[np.int64] | None, bool]:
    """The degenerate triangles, the others' keys and whether every vertex is known to be used.

    A key is ``(low n + middle) n + high`` of a triangle's sorted vertices (None from 2 000 000
    vertices: ``n**3`` would not fit in 63 bits). The compiled census (:func:`._clean.face_census`)
    computes the same in one pass; this NumPy code answers where it does not.
    """
    if n < 2_000_000:
        census = face_census(faces, n, cross, 2 * DEGENERATE_AREA_MM2)
        if census is not None:
            return census
    area2 = lengths(cross)
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    degenerate = repeated | (area2 < 2 * DEGENERATE_AREA_MM2)
    if n >= 2_000_000:
        return degenerate, None, False
    kept = faces[~degenerate] if degenerate.any() else faces
    first, second, third = kept[:, 0], kept[:, 1], kept[:, 2]
    low = np.minimum(np.minimum(first, second), third)
    high = np.maximum(np.maximum(first, second), third)
    size = np.int64(n)
    return degenerate, (low * size + (first + second + third - low - high)) * size + high, False


def face_cross_products(vertices: NDArray[np.float64], faces: NDArray[np.int64]) -> NDArray[np.float64]:
    """``(v1 - v0) x (v2 - v0)`` per triangle ``(m, 3)``: the normal times twice the area.

    The same arithmetic as ``np.cross`` on the gathered corners, a coordinate at a time
    (no ``(m, 3, 3)`` array of corners): the same values, in half the time; and in one pass
    over the triangles in the aligner's compiled kernel (:func:`._clean.cross_products`,
    the same operations), a fifth of that.
    """
    if (
        np.ndim(vertices) == 2
        and np.shape(vertices)[1] == 3
        and np.ndim(faces) == 2
        and np.shape(faces)[1] == 3
        and np.issubdtype(np.asarray(faces).dtype, np.integer)
    ):
        cross = cross_products(vertices, faces)
        if cross is not None:
            return cross
    columns = np.ascontiguousarray(np.asarray(vertices, dtype=np.float64).T)
    first = faces[:, 0]
    a = [column[faces[:, 1]] - column[first] for column in columns]
    b = [column[faces[:, 2]] - column[first] for column in columns]
    cross = np.empty((len(faces), 3))
    cross[:, 0] = a[1] * b[2] - a[2] * b[1]
    cross[:, 1] = a[2] * b[0] - a[0] * b[2]
    cross[:, 2] = a[0] * b[1] - a[1] * b[0]
    return cross


def vertex_normals(
    vertices: NDArray[np.float64], faces: NDArray[np.int64], face_normals: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """Area-weighted unit vertex normals.

    Parameters
    ----------
    vertices : (n, 3) float, millimetres
    faces : (m, 3) int
    face_normals : (m, 3) float, optional
        Area-weighted face normals (twice the area), when already computed.

    Returns
    -------
    normals : (n, 3) float
        Unit vectors (zero for a vertex whose triangles cancel out).
    """
    if face_normals is None:
        face_normals = face_cross_products(vertices, faces)
    vertices = np.asarray(vertices)
    if vertices.dtype == np.float64 and vertices.shape[1:] == (3,) and np.shape(face_normals) == (len(faces), 3):
        sums = corner_sums(faces, face_normals, len(vertices))  # the bincounts' sums below, in one pass
        if sums is not None:
            return unit(sums)
    normals = np.zeros_like(vertices)
    columns = (faces[:, 0], faces[:, 1], faces[:, 2])
    for axis in range(3):
        weights = np.ascontiguousarray(face_normals[:, axis])  # each corner of a triangle gets its normal
        normals[:, axis] = sum(np.bincount(column, weights=weights, minlength=len(vertices)) for column in columns)
    return unit(normals)


def orientation_is_inward(
    vertices: NDArray[np.float64],
    faces: NDArray[np.int64],
    normals: NDArray[np.float64],
    samples: int = 1500,
    decisive: float = 0.25,
    scene: Any = None,
) -> bool:
    """Whether the normals point into the teeth rather than out of them.

    A ray cast from the surface along an outward normal escapes; along an
    inward normal it hits the opposite wall of the crown. The winding is
    called inward only when the inward hypothesis is clearly better (by
    ``decisive`` in hit fraction); a single sheet (a bite scan) is left alone.

    Parameters
    ----------
    vertices : (n, 3) float, millimetres
    faces : (m, 3) int
    normals : (n, 3) float
    samples : int
        Vertices probed (evenly spaced indices).
    decisive : float
        Required difference of hit fractions.
    scene : MeshQuery, optional
        Of these triangles, when the caller has one.
    """
    if scene is None:
        scene = raycasting_scene(vertices, faces)
    pick = np.linspace(0, len(vertices) - 1, min(samples, len(vertices))).astype(np.int64)
    origins, directions = vertices[pick], normals[pick]
    keep = np.linalg.norm(directions, axis=1) > 0.5
    origins, directions = origins[keep], directions[keep]
    hits = []
    for sign in (1.0, -1.0):
        hit = scene.cast(origins + sign * 1e-3 * directions, sign * directions).t
        hits.append(float(np.isfinite(hit).mean()) if len(hit) else 0.0)
    return hits[0] - hits[1] > decisive
