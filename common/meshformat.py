"""Mesh files, read the same way everywhere: format sniffing, strict streaming parsing, input checks.

The API's upload path and the aligner use this one module (components depend only on
``common/``), so an upload is refused for exactly the reasons a job would refuse it:

- :func:`sniff_format` decides STL (binary or ASCII), PLY or OBJ from the first bytes;
  a text file is never taken for a binary STL.
- :class:`MeshStream` parses a file fed piece by piece (an upload as it streams, or a
  whole file at once) with bounded look-ahead. The grammar is strict: an ASCII STL
  facet is exactly ``facet normal``, ``outer loop``, three ``vertex`` lines,
  ``endloop``, ``endfacet`` inside ``solid`` ... ``endsolid``; a PLY header is checked
  line by line and its faces must index existing vertices; an OBJ face must refer to
  vertices defined before it. A refusal names the line where the format allows it.
- The geometric checks every scan passes, whatever its role: at least one triangle
  with an area, finite coordinates, a bounding box of a dental scan in millimetres (or
  the unit it was probably written in, see :data:`DENTAL_EXTENT_MM`).
  :func:`check_arch_shape` adds, for an upper or lower arch, what one must be: enough
  triangles, long enough, not flat, curved like a dental arch (on a sample of its points
  that does not depend on how the file was cut into pieces).

Limits (file size, triangle count) are checked from headers before any payload is
read where the format has them. Errors are :class:`~mesial.common.errors.ScanInputError`
subclasses whose text is written for the person who sent the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mesial.common.errors import (
    CorruptScan,
    EmptyScan,
    ImplausibleScale,
    NotADentalArch,
    ScanInputError,
    ScanTooLarge,
    UnsupportedScanFormat,
)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

FORMATS = ("stl-binary", "stl-ascii", "ply", "obj")
HEAD_BYTES = 4096  # bytes looked at to decide the format
MAX_PLY_HEADER = 1 << 16  # a PLY header longer than this is refused
MAX_LINE = 4096  # a text line longer than this is refused (bounded memory while streaming)

# --- units -------------------------------------------------------------------------------

# Millimetres per unit.
TO_MILLIMETRES: dict[str, float] = {
    "mm": 1.0,
    "millimetres": 1.0,
    "cm": 10.0,
    "m": 1000.0,
    "metres": 1000.0,
    "in": 25.4,
    "inches": 25.4,
    "um": 1e-3,
}

# A dental scan (one arch, or a buccal bite patch) has a bounding-box diagonal
# within these bounds, in millimetres. The box is the file's as posed, and a turn in
# space stretches its diagonal up to sqrt(3) times the scan's diameter: the widest arch
# of 3D-IOSSeg's train split (86.7 mm across) reaches 150 mm in its worst pose, so the
# upper bound accepts any pose of an arch up to 92 mm across.
DENTAL_EXTENT_MM: tuple[float, float] = (5.0, 160.0)

# Triangles with less area than this (mm²) are degenerate: 1e-10 mm² is a
# triangle with 10 nm sides, far below any scanner's resolution.
DEGENERATE_AREA_MM2 = 1e-10


def unit_conversion(current: str, desired: str = "mm") -> float:
    """Factor that converts lengths from ``current`` to ``desired`` units (names of :data:`TO_MILLIMETRES`)."""
    try:
        return TO_MILLIMETRES[current] / TO_MILLIMETRES[desired]
    except KeyError as exc:
        raise ValueError(f"unknown unit {exc.args[0]!r}; known: {sorted(TO_MILLIMETRES)}") from None


def guess_unit(extent: float) -> str | None:
    """The unit a scan of this bounding-box diagonal (file units) was most likely written in.

    ``"mm"`` when plausible as it is, ``"m"``, ``"in"``, ``"cm"`` or ``"um"`` when the
    scan becomes plausible in that unit, ``None`` when nothing fits.
    """
    low, high = DENTAL_EXTENT_MM
    for unit in ("mm", "m", "in", "cm", "um"):
        if low <= extent * TO_MILLIMETRES[unit] <= high:
            return unit
    return None


# --- the shape of an arch ------------------------------------------------------------------

# An upper or lower arch scan, even decimated (public sets ship ~8 000 vertices, 16 000
# triangles) and shortened (missing molars), has far more triangles, length and height than
# these (the 120 arches of 3D-IOSSeg's train split: at least 54.7 mm long, 14.8 mm thick,
# outline bent by 19.2 mm); a bite scan is a buccal patch and is not held to them.
ARCH_MIN_TRIANGLES = 2000
ARCH_SAMPLE_POINTS = 20_000  # the shape is measured on about this many points (at most twice)
ARCH_MIN_LENGTH_MM = 20.0  # longest side of the arch's own box (2-98 % of the points)
ARCH_MIN_THICKNESS_MM = 2.0  # its shortest side: crowns stand up from the gingiva
ARCH_MIN_CURVATURE_MM = 4.0  # sagitta of the arch's outline across its length (a U, not a bar)


def check_arch_shape(points: FloatArray, triangles: int, role: str = "") -> None:
    """Refuse an upper or lower arch that is too sparse, too small, too flat or not curved.

    Parameters
    ----------
    points : (n, 3) float, millimetres
        Points of the surface (all its vertices, or an even sample of them).
    triangles : int
        The mesh's triangle count.
    role : str
        Named in the message.

    Raises
    ------
    NotADentalArch
        With the measured value and the bound it missed.
    """
    if triangles < ARCH_MIN_TRIANGLES:
        raise NotADentalArch(f"{triangles:,} triangles: a dental arch scan has at least {ARCH_MIN_TRIANGLES:,}", role)
    points = np.asarray(points, dtype=np.float64)
    centred = points - points.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    local = centred @ axes.T  # columns: longest, middle, shortest direction
    low, high = np.percentile(local, [2.0, 98.0], axis=0)
    sides = high - low
    if sides[0] < ARCH_MIN_LENGTH_MM:
        raise NotADentalArch(
            f"{sides[0]:.1f} mm long (2-98 % of its points): a dental arch is at least {ARCH_MIN_LENGTH_MM:g} mm",
            role,
        )
    if sides[2] < ARCH_MIN_THICKNESS_MM:
        raise NotADentalArch(
            f"{sides[2]:.2f} mm thick (2-98 % of its points): flat, a dental arch is at least "
            f"{ARCH_MIN_THICKNESS_MM:g} mm",
            role,
        )
    curvature = _outline_sagitta(local[:, :2])
    if curvature < ARCH_MIN_CURVATURE_MM:
        raise NotADentalArch(
            f"its outline bends by {curvature:.1f} mm across its length: a dental arch is U-shaped "
            f"(at least {ARCH_MIN_CURVATURE_MM:g} mm)",
            role,
        )


def _outline_sagitta(plane: FloatArray, bins: int = 12) -> float:
    """How far the outline of a planar point set bends (mm), the largest over its four edges.

    Along each in-plane axis, the points are binned; the outermost coordinate per bin
    (both sides) traces an edge of the outline, and a parabola fitted through it gives
    the sagitta (middle against ends). A U (or a U filled by a palate) bends by tens of
    millimetres; a bar or a rectangle by almost nothing.
    """
    best = 0.0
    for along, across in ((0, 1), (1, 0)):
        x, y = plane[:, along], plane[:, across]
        edges = np.linspace(x.min(), x.max(), bins + 1)
        index = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
        for sign in (1.0, -1.0):
            outer = np.full(bins, -np.inf)
            np.maximum.at(outer, index, sign * y)
            filled = np.isfinite(outer)
            if filled.sum() < 5:
                continue
            centres = (edges[:-1] + edges[1:]) / 2
            t = (centres[filled] - centres[filled].mean()) / max(np.ptp(centres[filled]) / 2, 1e-9)
            a, _, _ = np.polyfit(t, outer[filled], 2)
            best = max(best, abs(float(a)))
    return best


# --- format --------------------------------------------------------------------------------

_STL_HEADER_BYTES = 84
_STL_RECORD_BYTES = 50
STL_DTYPE = np.dtype([("normal", "<f4", (3,)), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])
_CONTROL = bytes(set(range(32)) - {9, 10, 12, 13}) + b"\x7f"
_OBJ_KEYWORDS = frozenset(
    b"v vt vn vp f l p o g s usemtl mtllib cstype deg bmat step curv curv2 surf parm trim hole scrv "
    b"sp end con mg lod usemap maplib shadow_obj trace_obj ctech stech bevel c_interp d_interp".split()
)


# binary files sent by mistake, told by their magic number (a binary STL's 80-byte header is free-form)
_OTHER_FILES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive",
    b"\x1f\x8b": "a gzip archive",
    b"GIF8": "a GIF image",
    b"\x7fELF": "a program",
}


def _is_text(head: bytes) -> bool:
    return len(head.translate(None, _CONTROL)) == len(head)


def sniff_format(head: bytes, size: int | None = None) -> str:
    """The mesh format of a file from its first bytes.

    Parameters
    ----------
    head : bytes
        The first :data:`HEAD_BYTES` bytes of the file (all of it if shorter).
    size : int, optional
        File size in bytes, when known (not needed: a binary STL's size is checked
        against its header by the parser).

    Returns
    -------
    file_format : str
        ``"stl-binary"``, ``"stl-ascii"``, ``"ply"`` or ``"obj"``.

    Text (no control bytes) is an ASCII STL when it starts with ``solid``, an OBJ when
    its first statement is an OBJ keyword, and nothing else: a binary STL's triangle
    count always holds a zero or control byte below 16 million triangles, so text is
    never taken for one, whatever its length.
    """
    if not head:
        raise UnsupportedScanFormat("the file is empty (0 bytes): not an STL, PLY or OBJ mesh")
    if head.startswith((b"ply\n", b"ply\r\n")):
        return "ply"
    if _is_text(head):
        stripped = head.lstrip()
        if stripped[:5].lower() == b"solid" and stripped[5:6] in (b"", b" ", b"\t", b"\r", b"\n"):
            return "stl-ascii"
        for raw in head.splitlines():
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            if line.split(None, 1)[0] in _OBJ_KEYWORDS:
                return "obj"
            break
        raise UnsupportedScanFormat("a text file that is neither an ASCII STL nor an OBJ mesh")
    for magic, kind in _OTHER_FILES.items():
        if head.startswith(magic):
            raise UnsupportedScanFormat(f"not an STL, PLY or OBJ mesh file ({kind})")
    if len(head) >= _STL_HEADER_BYTES or (size is not None and size >= _STL_HEADER_BYTES):
        return "stl-binary"
    raise UnsupportedScanFormat("not an STL, PLY or OBJ mesh file")


# --- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshData:
    """A parsed, checked mesh.

    Attributes
    ----------
    file_format : str
        One of :data:`FORMATS`.
    vertices : (n, 3) float64
        Vertex positions in file units (an STL's corners merged when identical).
        Empty when the stream was told not to keep the mesh.
    faces : (m, 3) int64
        Triangles (polygons fanned). Empty when not kept.
    vertex_count, triangle_count : int
        As read (also when the arrays were not kept).
    """

    file_format: str
    vertices: FloatArray
    faces: IntArray
    vertex_count: int
    triangle_count: int


class _Sample:
    """Every k-th point of a stream, k doubling whenever more than twice the target would be kept.

    Which points are kept depends only on their order, not on how they arrive in pieces.
    """

    def __init__(self, target: int = ARCH_SAMPLE_POINTS) -> None:
        self.target = target
        self.step = 1
        self.seen = 0
        self.parts: list[FloatArray] = []
        self.kept = 0

    def add(self, points: NDArray[np.floating]) -> None:
        """Add points ``(k, 3)``, or triangles' corners ``(k, 3, 3)`` as their ``3 k`` points in order."""
        rows = len(points) * (3 if points.ndim == 3 else 1)
        # the step this piece ends with, found before copying anything: the multiples of a
        # step among all the indices seen are ceil(seen / step) points
        step, total = self.step, self.seen + rows
        while -(-total // step) > 2 * self.target:
            step *= 2
        if step != self.step:  # the points kept so far are the multiples of the old step, from index 0
            every = np.concatenate(self.parts)[:: step // self.step] if self.parts else np.zeros((0, 3))
            self.parts, self.kept, self.step = [every], len(every), step
        first = (-self.seen) % self.step  # the next index that is a multiple of step
        if points.ndim == 3:  # the corners' rows picked where they are (no flat copy of a strided view):
            # the picks of every third step lie a step of triangles apart, at one corner of them
            picked = np.empty((len(range(first, rows, self.step)), 3))
            for offset in range(3):
                start = first + offset * self.step
                picked[offset::3] = points[start // 3 :: self.step, start % 3]
        else:
            picked = np.asarray(points[first :: self.step], dtype=np.float64)
        self.seen = total
        self.parts.append(picked)
        self.kept += len(picked)

    def points(self) -> FloatArray:
        return np.concatenate(self.parts) if self.parts else np.zeros((0, 3))


@dataclass
class _Tally:
    """What the geometric checks need, gathered chunk by chunk."""

    sample: _Sample | None = None  # points of the surface, for an arch's shape
    triangles: int = 0
    usable: bool = False  # some triangle has an area and three distinct vertices
    nonfinite: int = 0  # coordinates (of vertices or STL corners) that are NaN or infinite
    low: FloatArray = field(default_factory=lambda: np.full(3, np.inf))
    high: FloatArray = field(default_factory=lambda: np.full(3, -np.inf))

    def corners(self, given: NDArray[np.floating]) -> None:
        """Add triangles given by their corners ``(k, 3, 3)`` (STL)."""
        corners = np.asarray(given, dtype=np.float64)
        self.triangles += len(corners)
        finite = np.isfinite(corners).all(axis=2)
        self.nonfinite += int((~finite).sum())
        flat = corners.reshape(-1, 3)[finite.ravel()]
        if self.sample is not None:
            self.sample.add(corners.reshape(-1, 3))
        if len(flat):
            self.low = np.minimum(self.low, _column_extremes(flat, np.min))
            self.high = np.maximum(self.high, _column_extremes(flat, np.max))
        for start in range(0, len(corners), 4096):
            if self.usable:
                break
            self.usable = bool(_has_area(corners[start : start + 4096]).any())

    def indexed(self, vertices: FloatArray, faces: IntArray) -> None:
        """Add indexed triangles (indices already checked against ``vertices``)."""
        self.triangles += len(faces)
        for start in range(0, len(faces), 4096):  # one usable triangle is enough: stop at the first
            if self.usable:
                break
            some = faces[start : start + 4096]
            distinct = (some[:, 0] != some[:, 1]) & (some[:, 1] != some[:, 2]) & (some[:, 0] != some[:, 2])
            self.usable = bool((distinct & _has_area(vertices[some])).any())

    def points(self, vertices: FloatArray, used: NDArray[np.bool_]) -> None:
        """Add the vertices of an indexed mesh (the box counts those a face uses)."""
        finite = np.isfinite(vertices[:, 0]) & np.isfinite(vertices[:, 1]) & np.isfinite(vertices[:, 2])
        self.nonfinite += int((~finite).sum())
        if self.sample is not None:
            self.sample.add(vertices if used.all() else vertices[used])
        counted = finite & used
        inside = vertices if counted.all() else vertices[counted]  # (no copy in the usual case)
        if len(inside):
            self.low = np.minimum(self.low, _column_extremes(inside, np.min))
            self.high = np.maximum(self.high, _column_extremes(inside, np.max))

    def verdict(self, unit: str | None, role: str = "") -> None:
        if self.triangles == 0:
            raise EmptyScan("the file holds no triangle")
        if self.nonfinite:
            raise CorruptScan("vertices have NaN or infinite coordinates")
        if not self.usable:
            raise EmptyScan("every triangle is degenerate (no area)")
        with np.errstate(over="ignore", invalid="ignore"):
            extent = float(np.linalg.norm(self.high - self.low))
        scale = 1.0 if unit is None else unit_conversion(unit, "mm")
        extent *= scale
        low, high = DENTAL_EXTENT_MM
        if not low <= extent <= high:
            likely = guess_unit(extent) if unit is None else None
            hint = f"; it looks like {likely} (pass unit={likely!r} to rescale)" if likely else ""
            raise ImplausibleScale(
                f"bounding box diagonal is {extent:.4g} mm, a dental scan is {low:g}-{high:g} mm{hint}",
                suggested_unit=likely,
            )
        if self.sample is not None:
            check_arch_shape(self.sample.points() * scale, self.triangles, role)


def _column_extremes(points: FloatArray, extreme: Callable[[FloatArray], np.floating]) -> FloatArray:
    """``extreme(points, axis=0)`` a column at a time (the same values; a reduction across the rows of an
    ``(n, 3)`` array is several times slower than one along a column)."""
    return np.array([extreme(column) for column in points.T], dtype=np.float64)


def _has_area(corners: FloatArray) -> NDArray[np.bool_]:
    """Whether each triangle ``(k, 3, 3)`` has at least :data:`DEGENERATE_AREA_MM2` of area."""
    with np.errstate(over="ignore", invalid="ignore"):
        u = corners[:, 1] - corners[:, 0]
        v = corners[:, 2] - corners[:, 0]
        x = u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1]
        y = u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2]
        z = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
        return np.asarray(x * x + y * y + z * z >= (2 * DEGENERATE_AREA_MM2) ** 2)


def check_arrays(vertices: FloatArray, faces: IntArray, *, unit: str | None = None, arch: bool = False) -> None:
    """The checks :class:`MeshStream` applies to a file, for a mesh given as arrays.

    Parameters
    ----------
    vertices : (n, 3) float, file units
    faces : (m, 3) int
    unit : str, optional
        The unit of ``vertices`` when not millimetres.
    arch : bool
        An upper or lower arch: :func:`check_arch_shape` too.
    """
    tally = _Tally(_Sample() if arch else None)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise CorruptScan("triangle indices point outside the vertex list")
    used = np.zeros(len(vertices), dtype=bool)
    used[faces] = True
    tally.points(vertices, used)
    if len(faces):
        tally.indexed(vertices, faces)
    tally.verdict(unit)


class MeshStream:
    """Parse and check a mesh file fed in order, piece by piece.

    Parameters
    ----------
    max_triangles : int
        Largest accepted triangle count (checked from headers where the format has one).
    keep : bool
        Keep the vertices and faces (the aligner) or only check them (an upload). Not
        kept, a binary or ASCII STL holds nothing but the current piece and a sample of
        points; a PLY or OBJ holds its vertex list and its faces as 32-bit indices until
        the end (about the size of the file at most).
    unit : str, optional
        The file's unit when not millimetres (for the size check).
    role : str
        Named in error messages (``"upper"``, ``"lower"``, ``"bite"``).
    arch : bool
        An upper or lower arch: :func:`check_arch_shape` too.
    merge : callable, optional
        Merges a kept binary STL's triangle corners ``(k, 3, 3)`` float32 into vertices ``(n, 3)``
        float64 and faces ``(k, 3)`` int64 with the values of :func:`merge_triangle_corners` (the
        default); the aligner passes its compiled one.

    Example
    -------
    >>> stream = MeshStream(max_triangles=5_000_000)
    >>> for piece in pieces:  # doctest: +SKIP
    ...     stream.feed(piece)
    >>> mesh = stream.finish()  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        max_triangles: int,
        keep: bool = True,
        unit: str | None = None,
        role: str = "",
        arch: bool = False,
        merge: Callable[[NDArray[np.float32]], tuple[FloatArray, IntArray]] | None = None,
    ) -> None:
        self.max_triangles = max_triangles
        self.merge = merge or merge_triangle_corners
        self.arch = arch
        self.keep = keep
        self.unit = unit
        self.role = role
        self.size = 0
        self.file_format: str | None = None
        self._head = bytearray()
        self._parser: _Parser | None = None

    def feed(self, piece: bytes) -> None:
        """Add the next bytes of the file (raises :class:`ScanInputError` as soon as it can)."""
        try:
            self.size += len(piece)
            if self._parser is None and not self._head and len(piece) >= HEAD_BYTES and isinstance(piece, bytes):
                self._head = bytearray(piece[:HEAD_BYTES])  # the whole head in a first piece of bytes: no copy of it
                self._start()
                assert self._parser is not None
                self._head = bytearray()
                self._parser.feed(piece)
            elif self._parser is None:
                self._head += piece
                if len(self._head) < HEAD_BYTES:
                    return
                self._start()
                assert self._parser is not None
                head, self._head = bytes(self._head), bytearray()
                self._parser.feed(head)
            else:
                self._parser.feed(piece)
        except ScanInputError as exc:
            exc.role = exc.role or self.role
            raise

    def finish(self) -> MeshData:
        """The parsed mesh, after the end-of-file checks and the geometric checks."""
        try:
            if self._parser is None:
                self._start()
                assert self._parser is not None
                head, self._head = bytes(self._head), bytearray()
                if head:
                    self._parser.feed(head)
            mesh = self._parser.finish()
            self._parser.tally.verdict(self.unit, self.role)
            return mesh
        except ScanInputError as exc:
            exc.role = exc.role or self.role
            raise

    def _start(self) -> None:
        self.file_format = sniff_format(bytes(self._head[:HEAD_BYTES]))
        parsers: dict[str, type[_Parser]] = {
            "stl-binary": _BinaryStl,
            "stl-ascii": _AsciiStl,
            "ply": _Ply,
            "obj": _Obj,
        }
        self._parser = parsers[self.file_format](self)


def read_mesh_bytes(
    data: bytes, *, max_triangles: int, unit: str | None = None, role: str = "", arch: bool = False
) -> MeshData:
    """Parse and check a whole mesh file held in memory (see :class:`MeshStream`)."""
    stream = MeshStream(max_triangles=max_triangles, unit=unit, role=role, arch=arch)
    stream.feed(data)
    return stream.finish()


class _Parser:
    file_format = ""

    def __init__(self, owner: MeshStream) -> None:
        self.owner = owner
        self.tally = _Tally(_Sample() if owner.arch else None)

    def feed(self, piece: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> MeshData:
        raise NotImplementedError

    def too_many(self, count: int, what: str = "triangles") -> None:
        if count > self.owner.max_triangles:
            raise ScanTooLarge(f"{what} {count:,} triangles, the limit is {self.owner.max_triangles:,}")


# --- binary STL ----------------------------------------------------------------------------


class _BinaryStl(_Parser):
    file_format = "stl-binary"

    def __init__(self, owner: MeshStream) -> None:
        super().__init__(owner)
        self.pending = bytearray()
        self.count: int | None = None
        self.records = 0
        self.parts: list[NDArray[np.float32]] = []

    def feed(self, piece: bytes) -> None:
        view = memoryview(piece)
        if self.count is None:
            if not self.pending and len(view) >= _STL_HEADER_BYTES:  # the whole header in this piece: no copy
                self.pending, view = bytearray(view[:_STL_HEADER_BYTES]), view[_STL_HEADER_BYTES:]
            else:
                self.pending += view
                view = memoryview(b"")
            if len(self.pending) < _STL_HEADER_BYTES:
                return
            self.count = int.from_bytes(self.pending[80:84], "little")
            self.too_many(self.count, "binary STL header claims")
            if len(self.pending) > _STL_HEADER_BYTES:
                view = memoryview(bytes(self.pending[_STL_HEADER_BYTES:]))
            self.pending = bytearray()
        if self.pending:
            view = memoryview(bytes(self.pending) + bytes(view))
            self.pending = bytearray()
        whole = len(view) // _STL_RECORD_BYTES
        if self.records + whole > self.count or (self.records + whole == self.count and len(view) % 50):
            raise CorruptScan(
                f"binary STL is longer than its header says: the header claims {self.count:,} triangles "
                f"({_STL_HEADER_BYTES + _STL_RECORD_BYTES * self.count:,} bytes)"
            )
        if whole:
            records = np.frombuffer(view, dtype=STL_DTYPE, count=whole)
            corners = records["corners"]
            if self.owner.keep:  # checked once merged (fewer points), in finish()
                # a view into the records when they are immutable bytes (nothing copied), else a copy
                self.parts.append(corners if isinstance(piece, bytes) else np.ascontiguousarray(corners))
            else:
                self.tally.corners(corners)
            self.records += whole
        self.pending += view[whole * _STL_RECORD_BYTES :]

    def finish(self) -> MeshData:
        size = self.owner.size
        if self.count is None:
            raise CorruptScan(f"binary STL is truncated: {size} bytes, shorter than its 84-byte header")
        if self.records != self.count:
            expected = _STL_HEADER_BYTES + _STL_RECORD_BYTES * self.count
            raise CorruptScan(
                f"binary STL is truncated: the header claims {self.count:,} triangles "
                f"({expected:,} bytes) but the file has {size:,} bytes"
            )
        if not self.owner.keep or not self.parts:
            return MeshData(self.file_format, np.zeros((0, 3)), np.zeros((0, 3), np.int64), 3 * self.count, self.count)
        corners = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        if self.tally.sample is not None:  # the corners, as a stream that is not kept samples them
            self.tally.sample.add(corners)
        vertices, faces = self.owner.merge(corners)
        sample, self.tally.sample = self.tally.sample, None
        self.tally.points(vertices, np.ones(len(vertices), dtype=bool))
        self.tally.sample = sample
        self.tally.indexed(vertices, faces)
        return MeshData(self.file_format, vertices, faces, len(vertices), len(faces))


def merge_triangle_corners(corners: NDArray[np.float32]) -> tuple[FloatArray, IntArray]:
    """A binary STL's triangle corners ``(k, 3, 3)`` as vertices ``(n, 3)`` float64 and faces ``(k, 3)`` int64
    (:func:`merge_identical_points`: the vertices in the order of their hash)."""
    merged, inverse = merge_identical_points(np.ascontiguousarray(corners).reshape(-1, 3))
    return merged.astype(np.float64), inverse.reshape(-1, 3)


def merge_identical_points(points: NDArray[np.floating]) -> tuple[NDArray[np.floating], IntArray]:
    """Merge bit-identical points (an STL's repeated triangle corners).

    Parameters
    ----------
    points : (k, 3) float32 or float64

    Returns
    -------
    unique : (n, 3), the dtype of ``points``
        The distinct points, in order of their hash (its high bits; the first of each group
        by index), or in the order of their bytes when two different points share those bits.
    inverse : (k,) int64
        ``unique[inverse] == points``.
    """
    points = np.ascontiguousarray(points)
    raw = points.view(np.uint32 if points.dtype == np.float32 else np.uint64)  # compared bit for bit (NaN too)
    bits = raw.astype(np.uint64)
    key = bits[:, 0] * np.uint64(0x9E3779B97F4A7C15)
    key ^= bits[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F)
    key ^= bits[:, 2] * np.uint64(0x165667B19E3779F9)
    # the hash's high bits above each point's index: one plain sort of integers (no argsort)
    # orders the points by hash and says where each one came from
    count = len(key)
    shift = np.uint64(max(1, (count - 1).bit_length()))
    key >>= shift
    key <<= shift
    key |= np.arange(count, dtype=np.uint64)
    key.sort()
    order = (key & ((np.uint64(1) << shift) - np.uint64(1))).astype(np.int64)
    key >>= shift
    starts = np.empty(count, dtype=bool)
    starts[:1] = True
    np.not_equal(key[1:], key[:-1], out=starts[1:])
    # exact: the points (bit for bit) change exactly where the hash does, or the slower path
    if points.dtype == np.float32:  # x and y as one 64-bit word, then z
        words = [np.ascontiguousarray(raw[:, :2]).view(np.uint64).ravel(), raw[:, 2]]
    else:
        words = [raw[:, 0], raw[:, 1], raw[:, 2]]
    differ = np.zeros(max(count - 1, 0), dtype=bool)
    for word in words:
        ordered = np.take(word, order)  # np.take: several times faster than fancy indexing here
        differ |= ordered[1:] != ordered[:-1]
    if not np.array_equal(differ, starts[1:]):  # two different points share the hash bits
        exact, inverse = np.unique(points.view(f"V{3 * points.itemsize}").ravel(), return_inverse=True)
        return exact.view(points.dtype).reshape(-1, 3), inverse.astype(np.int64)
    inverse = np.empty(count, dtype=np.int64)
    np.put(inverse, order, np.cumsum(starts) - 1)
    return np.take(points, order[starts], axis=0), inverse


# --- text formats: shared line handling ----------------------------------------------------

# possessive quantifiers (Python 3.11): a number, a gap, a line end never give back what they took,
# so the engine keeps no backtracking state (2.5x faster over a 40 MB ASCII STL)
_NUM = rb"[-+]?+(?:\d++\.?+\d*+|\.\d++)(?:[eE][-+]?+\d++)?+"
_SP = rb"[ \t]++"
_EOL = rb"[ \t]*+\r?+\n"


class _Lines(_Parser):
    """A text format consumed in blocks of whole lines (the last, partial line waits)."""

    def __init__(self, owner: MeshStream) -> None:
        super().__init__(owner)
        self.pending = b""
        self.line_no = 0  # lines consumed so far

    def feed(self, piece: bytes) -> None:
        data = self.pending + piece if self.pending else piece
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        if len(self.pending) > MAX_LINE:
            line = self.line_no + data.count(b"\n", 0, cut) + 1
            raise CorruptScan(f"line {line}: longer than {MAX_LINE} bytes")
        if cut:
            self.block(data[:cut])

    def end_of_file(self) -> None:
        if self.pending.strip():
            self.block(self.pending + b"\n")
        self.pending = b""

    def block(self, data: bytes) -> None:
        raise NotImplementedError

    def next_line(self, data: bytes, pos: int) -> int:
        """Read the one line of ``data`` at ``pos`` the slow way; the position after it."""
        newline = data.index(b"\n", pos)
        self.line_no += 1
        self._line(data[pos:newline])
        return newline + 1

    def _line(self, raw: bytes) -> None:
        raise NotImplementedError

    def fail(self, line_no: int, message: str, line: bytes) -> CorruptScan:
        shown = line.strip()[:60].decode("utf-8", errors="replace")
        return CorruptScan(f"line {line_no}: {message}, found {shown!r}" if shown else f"line {line_no}: {message}")


def _number(token: bytes) -> float:
    try:
        return float(token)
    except ValueError:
        raise ValueError(f"{token[:30]!r} is not a number") from None


# --- ASCII STL -----------------------------------------------------------------------------

_FACET = (
    rb"[ \t]*+facet" + _SP + rb"normal" + (_SP + _NUM) * 3 + _EOL + rb"[ \t]*+outer" + _SP + rb"loop" + _EOL
    + (rb"[ \t]*+vertex" + (_SP + _NUM) * 3 + _EOL) * 3
    + rb"[ \t]*+endloop" + _EOL + rb"[ \t]*+endfacet" + _EOL
)  # fmt: skip
_FACETS = re.compile(rb"(?:" + _FACET + rb"){1,4096}+")
_STL_WORDS = re.compile(rb"facet|normal|outer|loop|vertex|endloop|endfacet")
# Facets the grammar matched, to numbers: every letter but e to a space leaves each keyword's e's
# alone between blanks (" e ", or at a line start), where a number's exponent follows a digit.
_NOT_E = bytes.maketrans(b"abcdfghijklmnopqrstuvwxyz", b" " * 25)

# states of the ASCII STL grammar
_BEFORE, _SOLID, _FACET_OPEN, _LOOP, _LOOP_CLOSED, _AFTER = range(6)


class _AsciiStl(_Lines):
    file_format = "stl-ascii"

    def __init__(self, owner: MeshStream) -> None:
        super().__init__(owner)
        self.state = _BEFORE
        self.loop_vertices = 0
        self.facet: list[float] = []
        self.slow: list[list[float]] = []
        self.parts: list[FloatArray] = []
        self.count = 0

    def block(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self.state == _SOLID:
                match = _FACETS.match(data, pos)
                if match is not None:
                    self._fast(match.group())
                    pos = match.end()
                    continue
            pos = self.next_line(data, pos)

    def _fast(self, text: bytes) -> None:
        self._flush()  # facets keep the file's order
        lines = text.count(b"\n")
        words = text.translate(_NOT_E).replace(b" e ", b"   ").replace(b"\ne ", b"\n  ").replace(b"\te ", b"\t  ")
        numbers = np.fromstring(words, dtype=np.float64, sep=" ")
        if numbers.size != 12 * (lines // 7):  # an e the replacements missed: the regex way
            numbers = np.fromstring(_STL_WORDS.sub(b" ", text), dtype=np.float64, sep=" ")
        facets = numbers.reshape(-1, 12)[:, 3:].reshape(-1, 3, 3)
        self.line_no += lines
        self._add(facets)

    def _add(self, corners: FloatArray) -> None:
        self.count += len(corners)
        self.too_many(self.count, "the file holds more than")
        self.tally.corners(corners)
        if self.owner.keep:
            self.parts.append(corners)

    def _line(self, raw: bytes) -> None:
        tokens = raw.lower().split()  # keywords in any case (some CAD exporters write FACET NORMAL)
        if not tokens:
            return
        word, n = tokens[0], self.line_no
        try:
            if self.state in (_BEFORE, _AFTER):
                if word != b"solid":
                    expected = "'solid'" if self.state == _BEFORE else "'solid' or the end of the file"
                    raise self.fail(n, f"expected {expected}", raw)
                self.state = _SOLID
            elif self.state == _SOLID:
                if word == b"endsolid":
                    self._flush()
                    self.state = _AFTER
                elif word == b"facet" and len(tokens) == 5 and tokens[1] == b"normal":
                    [_number(t) for t in tokens[2:]]
                    self.state, self.facet = _FACET_OPEN, []
                else:
                    raise self.fail(n, "expected 'facet normal nx ny nz' or 'endsolid'", raw)
            elif self.state == _FACET_OPEN:
                if tokens != [b"outer", b"loop"]:
                    raise self.fail(n, "expected 'outer loop'", raw)
                self.state, self.loop_vertices = _LOOP, 0
            elif self.state == _LOOP:
                if word == b"vertex" and len(tokens) == 4:
                    self.loop_vertices += 1
                    if self.loop_vertices > 3:
                        raise self.fail(n, "a facet has more than 3 vertices", raw)
                    self.facet += [_number(t) for t in tokens[1:]]
                elif word == b"endloop" and len(tokens) == 1:
                    if self.loop_vertices != 3:
                        raise self.fail(n, f"a facet has {self.loop_vertices} vertices, expected 3", raw)
                    self.state = _LOOP_CLOSED
                else:
                    raise self.fail(n, "expected 'vertex x y z' or 'endloop'", raw)
            elif self.state == _LOOP_CLOSED:
                if tokens != [b"endfacet"]:
                    raise self.fail(n, "expected 'endfacet'", raw)
                self.slow.append(self.facet)
                self.state = _SOLID
                if len(self.slow) >= 4096:
                    self._flush()
        except ValueError as exc:
            if isinstance(exc, ScanInputError):
                raise
            raise self.fail(n, str(exc), raw) from None

    def _flush(self) -> None:
        if self.slow:
            self._add(np.asarray(self.slow, dtype=np.float64).reshape(-1, 3, 3))
            self.slow = []

    def finish(self) -> MeshData:
        self.end_of_file()
        if self.state != _AFTER:
            raise CorruptScan(
                f"line {self.line_no}: the file ends inside a solid (no 'endsolid'): truncated or malformed"
            )
        self._flush()
        if not self.owner.keep or not self.parts:
            return MeshData(self.file_format, np.zeros((0, 3)), np.zeros((0, 3), np.int64), 3 * self.count, self.count)
        corners = np.concatenate(self.parts).reshape(-1, 3)
        vertices, inverse = merge_identical_points(corners)
        return MeshData(
            self.file_format, vertices.astype(np.float64), inverse.reshape(-1, 3), len(vertices), self.count
        )


# --- OBJ -----------------------------------------------------------------------------------

_OBJ_VERTICES = re.compile(rb"(?:[ \t]*+v" + (_SP + _NUM) * 3 + _EOL + rb"){1,8192}+")
_OBJ_TRIANGLES = re.compile(rb"(?:[ \t]*+f" + (_SP + rb"\d++") * 3 + _EOL + rb"){1,8192}+")
_OBJ_LETTERS = bytes.maketrans(b"vf", b"  ")


class _Obj(_Lines):
    file_format = "obj"

    def __init__(self, owner: MeshStream) -> None:
        super().__init__(owner)
        self.vertex_parts: list[FloatArray] = []
        self.face_parts: list[IntArray] = []
        self.slow_vertices: list[list[float]] = []
        self.slow_faces: list[list[int]] = []
        self.vertices = 0
        self.triangles = 0

    def block(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            match = _OBJ_VERTICES.match(data, pos)
            if match is not None:
                self._flush()
                text = match.group()
                values = np.fromstring(text.translate(_OBJ_LETTERS), dtype=np.float64, sep=" ")
                self._vertices(values.reshape(-1, 3))
                self.line_no += text.count(b"\n")
                pos = match.end()
                continue
            match = _OBJ_TRIANGLES.match(data, pos)
            if match is not None:
                self._flush()
                text = match.group()
                faces = np.fromstring(text.translate(_OBJ_LETTERS), dtype=np.int64, sep=" ").reshape(-1, 3)
                bad = (faces < 1) | (faces > self.vertices)
                if bad.any():
                    row = int(np.argmax(bad.any(axis=1)))
                    line = text.split(b"\n")[row]
                    self.line_no += row + 1
                    raise self.fail(self.line_no, self._missing(int(faces[row][bad[row]][0])), line)
                self._faces(faces - 1)
                self.line_no += text.count(b"\n")
                pos = match.end()
                continue
            pos = self.next_line(data, pos)

    def _missing(self, index: int) -> str:
        return f"a face refers to vertex {index}, {self.vertices:,} are defined before it"

    def _vertices(self, values: FloatArray) -> None:
        self.vertices += len(values)
        if self.vertices > 3 * self.owner.max_triangles + 3:
            raise ScanTooLarge(
                f"more than {self.vertices - 1:,} vertices: the limit is {self.owner.max_triangles:,} triangles "
                "of 3 vertices each"
            )
        self.vertex_parts.append(values)

    def _faces(self, faces: IntArray) -> None:
        self.triangles += len(faces)
        self.too_many(self.triangles, "the file holds more than")
        self.face_parts.append(faces if self.owner.keep else faces.astype(np.int32))

    def _flush(self) -> None:
        if self.slow_vertices:
            self._vertices(np.asarray(self.slow_vertices, dtype=np.float64))
            self.slow_vertices = []
        if self.slow_faces:
            self._faces(np.asarray(self.slow_faces, dtype=np.int64))
            self.slow_faces = []

    def _line(self, raw: bytes) -> None:
        tokens = raw.split()
        if not tokens or tokens[0].startswith(b"#"):
            return
        word, n = tokens[0], self.line_no
        if word == b"v":
            if len(tokens) not in (4, 5, 7, 8):
                raise self.fail(n, "a vertex is 'v x y z' (with w or r g b)", raw)
            try:
                xyz = [_number(t) for t in tokens[1:]][:3]
            except ValueError as exc:
                raise self.fail(n, str(exc), raw) from None
            self.slow_vertices.append(xyz)
            if len(self.slow_vertices) >= 8192:
                self._flush()
        elif word == b"f":
            if len(tokens) < 4:
                raise self.fail(n, "a face needs at least 3 vertices", raw)
            defined = self.vertices + len(self.slow_vertices)
            refs = []
            for token in tokens[1:]:
                head = token.split(b"/", 1)[0]
                try:
                    index = int(head)
                except ValueError:
                    raise self.fail(n, f"{head[:20]!r} is not a vertex index", raw) from None
                if index < 0:
                    index += defined + 1
                if not 1 <= index <= defined:
                    self.vertices = defined
                    raise self.fail(n, self._missing(int(head)), raw)
                refs.append(index - 1)
            self.slow_faces += [[refs[0], refs[i], refs[i + 1]] for i in range(1, len(refs) - 1)]
            if len(self.slow_faces) >= 8192:
                self._flush()
        elif word not in _OBJ_KEYWORDS:
            raise self.fail(n, "not an OBJ statement", raw)

    def finish(self) -> MeshData:
        self.end_of_file()
        self._flush()
        vertices = np.concatenate(self.vertex_parts) if self.vertex_parts else np.zeros((0, 3))
        faces = np.concatenate(self.face_parts) if self.face_parts else np.zeros((0, 3), np.int64)
        used = np.zeros(len(vertices), dtype=bool)
        used[faces] = True
        self.tally.points(vertices, used)
        if len(faces):
            self.tally.indexed(vertices, faces)
        if not self.owner.keep:
            return MeshData(self.file_format, np.zeros((0, 3)), np.zeros((0, 3), np.int64), len(vertices), len(faces))
        return MeshData(self.file_format, vertices, faces, len(vertices), len(faces))


# --- PLY -----------------------------------------------------------------------------------

_PLY_SCALARS = {
    b"char": "i1", b"int8": "i1", b"uchar": "u1", b"uint8": "u1", b"short": "i2", b"int16": "i2",
    b"ushort": "u2", b"uint16": "u2", b"int": "i4", b"int32": "i4", b"uint": "u4", b"uint32": "u4",
    b"float": "f4", b"float32": "f4", b"double": "f8", b"float64": "f8",
}  # fmt: skip
_FACE_LISTS = (b"vertex_indices", b"vertex_index")


@dataclass
class _Element:
    name: bytes
    count: int
    scalars: list[tuple[bytes, str]] = field(default_factory=list)  # (name, dtype code) in order
    lists: list[tuple[int, bytes, str, str]] = field(default_factory=list)  # (position, name, count, index)

    @property
    def props(self) -> int:
        return len(self.scalars) + len(self.lists)


class _Ply(_Parser):
    file_format = "ply"

    def __init__(self, owner: MeshStream) -> None:
        super().__init__(owner)
        self.buffer = bytearray()
        self.elements: list[_Element] | None = None
        self.encoding = ""
        self.order = "<"
        self.current = 0  # element being read
        self.done = 0  # rows of it read
        self.line_no = 0
        self.vertex_count = 0
        self.face_count = 0
        self.vertex_parts: list[FloatArray] = []
        self.face_parts: list[IntArray] = []
        self.vertices: FloatArray = np.zeros((0, 3))
        self.filled = 0
        self.face_total = 0

    # header
    def _header(self) -> bool:
        end = self.buffer.find(b"end_header")
        if end < 0:
            if len(self.buffer) > MAX_PLY_HEADER:
                raise CorruptScan(f"PLY header has no end_header within its first {MAX_PLY_HEADER // 1024} KiB")
            return False
        newline = self.buffer.find(b"\n", end)
        if newline < 0:
            return False
        lines = bytes(self.buffer[:newline]).split(b"\n")
        del self.buffer[: newline + 1]
        elements: list[_Element] = []
        for n, raw in enumerate(lines, start=1):
            tokens = raw.split()
            word = tokens[0] if tokens else b""
            if n == 1 or word in (b"comment", b"obj_info") or not tokens:
                continue
            if word == b"format" and len(tokens) == 3 and not self.encoding:
                codes = {b"ascii": "ascii", b"binary_little_endian": "<", b"binary_big_endian": ">"}
                if tokens[1] not in codes:
                    raise CorruptScan(f"PLY header line {n}: unknown format {tokens[1][:30]!r}")
                self.encoding = "ascii" if tokens[1] == b"ascii" else "binary"
                self.order = codes[tokens[1]] if self.encoding == "binary" else "<"
            elif word == b"element" and len(tokens) == 3 and tokens[2].isdigit():
                elements.append(_Element(tokens[1], int(tokens[2])))
            elif word == b"property" and elements and len(tokens) == 3 and tokens[1] in _PLY_SCALARS:
                elements[-1].scalars.append((tokens[2], _PLY_SCALARS[tokens[1]]))
            elif (
                word == b"property" and elements and len(tokens) == 5 and tokens[1] == b"list"
                and tokens[2] in _PLY_SCALARS and tokens[3] in _PLY_SCALARS
                and _PLY_SCALARS[tokens[2]][0] in "iu" and _PLY_SCALARS[tokens[3]][0] in "iu"
            ):  # fmt: skip
                element = elements[-1]
                element.lists.append((element.props, tokens[4], _PLY_SCALARS[tokens[2]], _PLY_SCALARS[tokens[3]]))
            elif word == b"end_header":
                break
            else:
                shown = raw.strip()[:60].decode("utf-8", errors="replace")
                raise CorruptScan(f"PLY header line {n}: not a PLY header statement: {shown!r}")
        self.line_no = len(lines)
        if not self.encoding:
            raise CorruptScan("PLY header has no 'format' line")
        names = [e.name for e in elements]
        if b"vertex" not in names or b"face" not in names:
            raise CorruptScan("PLY header must declare a vertex and a face element")
        vertex, face = elements[names.index(b"vertex")], elements[names.index(b"face")]
        if vertex.lists or not {b"x", b"y", b"z"} <= {name for name, _ in vertex.scalars}:
            raise CorruptScan("PLY vertex element must have scalar x, y and z properties")
        if len(face.lists) != 1 or face.lists[0][1] not in _FACE_LISTS:
            raise CorruptScan("PLY face element must have one list property vertex_indices")
        for element in elements:
            if element.lists and element is not face and self.encoding == "binary":
                raise UnsupportedScanFormat(
                    f"PLY element {element.name.decode(errors='replace')!r} has a list property"
                )
        self.too_many(face.count, "PLY header claims")
        if vertex.count > 3 * self.owner.max_triangles + 3:
            raise ScanTooLarge(
                f"PLY header claims {vertex.count:,} vertices: the limit is {self.owner.max_triangles:,} triangles "
                "of 3 vertices each"
            )
        self.vertex_count, self.face_count = vertex.count, face.count
        self.elements = elements
        self.vertices = np.zeros((vertex.count, 3))
        self.filled = 0
        return True

    def feed(self, piece: bytes) -> None:
        self.buffer += piece
        if self.elements is None and not self._header():
            return
        self._consume(final=False)

    def _consume(self, *, final: bool) -> None:
        assert self.elements is not None
        while self.current < len(self.elements):
            element = self.elements[self.current]
            if self.done == element.count:
                self.current, self.done = self.current + 1, 0
                continue
            before = self.done
            if self.encoding == "binary":
                self._binary_rows(element)
            else:
                self._ascii_rows(element, final)
            if self.done == before:
                return

    def _row_dtype(self, element: _Element, list_length: int | None) -> np.dtype:
        fields: list[tuple[str, str] | tuple[str, str, tuple[int]]] = []
        scalars = iter(element.scalars)
        for position in range(element.props):
            listed = [lst for lst in element.lists if lst[0] == position]
            if listed:
                _, _, count, index = listed[0]
                fields += [("__n", self.order + count), ("__i", self.order + index, (list_length or 0,))]
            else:
                name, code = next(scalars)
                fields.append((f"s{position}_" + name.decode(errors="replace"), self.order + code))
        return np.dtype(fields)

    def _binary_rows(self, element: _Element) -> None:
        left = element.count - self.done
        if not element.lists:
            dtype = self._row_dtype(element, None)
            rows = min(left, len(self.buffer) // dtype.itemsize) if dtype.itemsize else left
            if rows:
                table = np.frombuffer(self.buffer, dtype=dtype, count=rows)
                if element.name == b"vertex":
                    self._store_vertices(table, dtype)
                del table  # releases the buffer
                del self.buffer[: rows * dtype.itemsize]
                self.done += rows
            return
        dtype = self._row_dtype(element, 3)  # triangles: fixed rows; anything else row by row
        rows = min(left, len(self.buffer) // dtype.itemsize)
        if rows:
            table = np.frombuffer(self.buffer, dtype=dtype, count=rows)
            triangles = table["__n"] == 3
            if not triangles.all():
                rows = int(np.argmin(triangles))
            faces = table["__i"][:rows].astype(np.int64)
            del table  # releases the buffer
            if rows:
                self._store_faces(faces, row=self.done)
                del self.buffer[: rows * dtype.itemsize]
                self.done += rows
                return
        if left and len(self.buffer):
            self._binary_polygon(element)

    def _binary_polygon(self, element: _Element) -> None:
        """One face row whose list is not a triangle (fanned), read field by field."""
        offset, faces = 0, None
        scalars = iter(element.scalars)
        for position in range(element.props):
            listed = [lst for lst in element.lists if lst[0] == position]
            if listed:
                _, _, count_code, index_code = listed[0]
                count_type, index_type = np.dtype(self.order + count_code), np.dtype(self.order + index_code)
                if len(self.buffer) < offset + count_type.itemsize:
                    return
                n = int(np.frombuffer(self.buffer, count_type, 1, offset)[0])
                offset += count_type.itemsize
                if n < 3:
                    raise CorruptScan(f"PLY face {self.done + 1:,} has {n} vertices, a face needs at least 3")
                if len(self.buffer) < offset + n * index_type.itemsize:
                    return
                ring = np.frombuffer(self.buffer, index_type, n, offset).astype(np.int64)
                offset += n * index_type.itemsize
                faces = np.stack([np.full(n - 2, ring[0]), ring[1:-1], ring[2:]], axis=1)
            else:
                offset += np.dtype(next(scalars)[1]).itemsize
                if len(self.buffer) < offset:
                    return
        assert faces is not None
        self._store_faces(faces, row=self.done)
        del self.buffer[:offset]
        self.done += 1

    def _ascii_rows(self, element: _Element, final: bool) -> None:
        cut = self.buffer.rfind(b"\n") + 1
        if final and cut < len(self.buffer):
            self.buffer += b"\n"
            cut = len(self.buffer)
        if len(self.buffer) - cut > MAX_LINE:
            raise CorruptScan(f"line {self.line_no + 1}: longer than {MAX_LINE} bytes")
        lines = bytes(self.buffer[:cut]).split(b"\n")[:-1]
        take = lines[: element.count - self.done]
        if not take:
            return
        consumed = sum(len(line) + 1 for line in take)
        first = self.line_no + 1
        vertex_rows: list[list[float]] = []
        faces: list[list[int]] = []
        xyz = [i for i, (name, _) in enumerate(element.scalars) if name in (b"x", b"y", b"z")]
        for k, raw in enumerate(take):
            tokens = raw.split()
            n = first + k
            try:
                if not element.lists:
                    if len(tokens) != len(element.scalars):
                        raise ValueError(f"expected {len(element.scalars)} values")
                    if element.name == b"vertex":
                        values = [_number(t) for t in tokens]
                        vertex_rows.append([values[i] for i in xyz])
                    continue
                at = 0
                for position in range(element.props):
                    listed = [lst for lst in element.lists if lst[0] == position]
                    if listed:
                        count = int(tokens[at])
                        ring = [int(t) for t in tokens[at + 1 : at + 1 + count]]
                        if count < 3 or len(ring) != count:
                            raise ValueError(f"a face lists {count} vertices")
                        at += 1 + count
                        faces += [[ring[0], ring[i], ring[i + 1]] for i in range(1, count - 1)]
                    else:
                        at += 1
                if at != len(tokens):
                    raise ValueError(f"expected {at} values")
            except (ValueError, IndexError) as exc:
                message = str(exc) if isinstance(exc, ValueError) else "too few values"
                shown = raw.strip()[:60].decode("utf-8", errors="replace")
                raise CorruptScan(f"line {n}: {message}, found {shown!r}") from None
        if vertex_rows:
            self.vertices[self.filled : self.filled + len(vertex_rows)] = vertex_rows
            self.filled += len(vertex_rows)
        if faces:
            self._store_faces(np.asarray(faces, dtype=np.int64), row=self.done, line=first)
        del self.buffer[:consumed]
        self.line_no += len(take)
        self.done += len(take)

    def _store_vertices(self, table: NDArray[np.void], dtype: np.dtype) -> None:
        names = {name.split("_", 1)[1]: name for name in dtype.names or ()}
        block = np.stack([table[names["x"]], table[names["y"]], table[names["z"]]], axis=1).astype(np.float64)
        self.vertices[self.filled : self.filled + len(block)] = block
        self.filled += len(block)

    def _store_faces(self, faces: IntArray, *, row: int, line: int | None = None) -> None:
        bad = (faces < 0) | (faces >= self.vertex_count)
        if bad.any():
            k = int(np.argmax(bad.any(axis=1)))
            where = f"line {line + k}" if line is not None and self.encoding == "ascii" else "PLY face"
            raise CorruptScan(
                f"{where}: a face refers to vertex {int(faces[k][bad[k]][0])}, "
                f"the file has {self.vertex_count:,} vertices (0 to {self.vertex_count - 1:,})"
            )
        self.face_parts.append(faces if self.owner.keep else faces.astype(np.int32))
        self.face_total += len(faces)
        self.too_many(self.face_total, "the file holds more than")

    def finish(self) -> MeshData:
        if self.elements is None:
            if not self._header():
                raise CorruptScan("PLY header has no end_header")
        self._consume(final=True)
        assert self.elements is not None
        if self.current < len(self.elements):
            element = self.elements[self.current]
            raise CorruptScan(
                f"PLY is truncated: {self.done:,} of the {element.count:,} {element.name.decode(errors='replace')} "
                "rows its header declares"
            )
        if self.encoding == "binary" and self.buffer:
            raise CorruptScan(f"PLY is longer than its header declares ({len(self.buffer):,} bytes after the last row)")
        if self.encoding == "ascii" and self.buffer.strip():
            raise CorruptScan(f"line {self.line_no + 1}: data after the last row the PLY header declares")
        faces = np.concatenate(self.face_parts) if self.face_parts else np.zeros((0, 3), np.int64)
        used = np.zeros(self.vertex_count, dtype=bool)
        used[faces] = True
        self.tally.points(self.vertices, used)
        if len(faces):
            self.tally.indexed(self.vertices, faces)
        if not self.owner.keep:
            return MeshData(
                self.file_format, np.zeros((0, 3)), np.zeros((0, 3), np.int64), self.vertex_count, len(faces)
            )
        return MeshData(self.file_format, self.vertices, faces, self.vertex_count, len(faces))
