"""Streaming type check of uploaded meshes: STL (binary, ASCII), PLY and OBJ.

Fed the upload piece by piece, it decides the format from the first bytes (anything
else: 415), then checks the counts the header promises against what arrives: a binary
STL's size must be ``84 + 50 × triangles``; a PLY's header must declare vertices and
faces and an ASCII PLY must carry those many lines; an ASCII STL or an OBJ must hold at
least one face whose vertices exist. Memory stays bounded: only the head and the
current line are kept.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from mesial.api.errors import UnsupportedMediaType, ValidationFailed

HEAD_BYTES = 4096  # enough for any PLY header we accept and an STL/OBJ decision
MAX_LINE = 4096
_PLY_ELEMENT = re.compile(rb"^element (\w+) (\d+)$")


@dataclass(frozen=True)
class MeshInfo:
    format: str  # "stl", "ply", "obj"
    encoding: str  # "binary", "ascii"
    vertices: int
    triangles: int


class MeshCheck:
    def __init__(self, max_triangles: int) -> None:
        self.max_triangles = max_triangles
        self.head = bytearray()
        self.decided: str | None = None
        self.size = 0
        self._line = bytearray()
        self._lines = 0
        self._faces = 0
        self._vertices = 0
        self._ply_body_lines = 0
        self._ply: tuple[str, int, int, int] | None = None  # encoding, vertices, faces, header size
        self._stl_triangles = 0

    # -- feeding --------------------------------------------------------------------
    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.decided is None:
            self.head += piece
            if len(self.head) < HEAD_BYTES:
                return
            self._decide(final=False)
            pending, self.head = bytes(self.head), self.head[:HEAD_BYTES]
            self._consume(pending)
        else:
            self._consume(piece)

    def finish(self) -> MeshInfo:
        if self.decided is None:
            self._decide(final=True)
            self._consume(bytes(self.head))
        if self._line:
            self._end_line(bytes(self._line))
            self._line.clear()
        return self._result()

    # -- deciding -------------------------------------------------------------------
    def _decide(self, *, final: bool) -> None:
        head = bytes(self.head[:HEAD_BYTES])
        if head.startswith(b"ply\n") or head.startswith(b"ply\r\n"):
            self._ply = self._parse_ply_header(head)
            self.decided = "ply"
        elif self._looks_binary_stl(head):
            self.decided = "stl-binary"
            (self._stl_triangles,) = struct.unpack_from("<I", head, 80)
            if self._stl_triangles > self.max_triangles:
                raise ValidationFailed("mesh has more triangles than allowed")
        elif head.lstrip().startswith(b"solid") and b"facet" in head:
            self.decided = "stl-ascii"
        elif self._looks_obj(head):
            self.decided = "obj"
        else:
            raise UnsupportedMediaType("not an STL, PLY or OBJ mesh")

    @staticmethod
    def _looks_binary_stl(head: bytes) -> bool:
        if len(head) < 84:
            return False
        (count,) = struct.unpack_from("<I", head, 80)
        # ASCII STL also starts with "solid": a binary one is told by its exact size later;
        # here, require a plausible count and non-text bytes after the header or a non-"solid" start.
        return count > 0 and (not head.startswith(b"solid") or b"facet" not in head[:HEAD_BYTES])

    @staticmethod
    def _looks_obj(head: bytes) -> bool:
        for raw in head.splitlines()[:200]:
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            word = line.split(None, 1)[0]
            if word in (b"v", b"vn", b"vt", b"f", b"o", b"g", b"mtllib", b"usemtl", b"s"):
                return True
            return False
        return False

    def _parse_ply_header(self, head: bytes) -> tuple[str, int, int, int]:
        end = head.find(b"end_header")
        if end < 0:
            raise UnsupportedMediaType("PLY header is missing or too long")
        newline = head.find(b"\n", end)
        header_size = (newline + 1) if newline >= 0 else len(head)
        lines = [line.strip() for line in head[:end].splitlines()[1:]]
        encoding = ""
        vertices = faces = -1
        for line in lines:
            if line.startswith(b"format "):
                parts = line.split()
                encoding = {b"ascii": "ascii", b"binary_little_endian": "binary", b"binary_big_endian": "binary"}.get(
                    parts[1] if len(parts) > 1 else b"", ""
                )
            match = _PLY_ELEMENT.match(line)
            if match and match.group(1) == b"vertex":
                vertices = int(match.group(2))
            elif match and match.group(1) == b"face":
                faces = int(match.group(2))
        if not encoding:
            raise UnsupportedMediaType("PLY format line missing or unknown")
        if vertices < 3 or faces < 1:
            raise ValidationFailed("PLY must declare at least 3 vertices and 1 face")
        if faces > self.max_triangles:
            raise ValidationFailed("mesh has more triangles than allowed")
        return encoding, vertices, faces, header_size

    # -- consuming ------------------------------------------------------------------
    def _consume(self, piece: bytes) -> None:
        if self.decided == "stl-binary" or (self._ply is not None and self._ply[0] == "binary"):
            return  # checked by size at the end
        if self.decided == "ply" and self._lines == 0 and not self._line and self._ply is not None:
            piece = piece[self._ply[3] :]  # skip the header, counted separately
            self._lines = -1
        start = 0
        while True:
            newline = piece.find(b"\n", start)
            if newline < 0:
                self._line += piece[start:]
                if len(self._line) > MAX_LINE:
                    raise ValidationFailed("mesh has an overlong line")
                return
            self._line += piece[start:newline]
            self._end_line(bytes(self._line))
            self._line.clear()
            start = newline + 1

    def _end_line(self, line: bytes) -> None:
        text = line.strip()
        if self.decided == "stl-ascii":
            if text.startswith(b"facet"):
                self._faces += 1
            elif text.startswith(b"vertex"):
                self._vertices += 1
        elif self.decided == "obj":
            if text.startswith(b"v "):
                self._vertices += 1
            elif text.startswith(b"f "):
                self._check_obj_face(text)
        elif self.decided == "ply" and text:
            self._ply_body_lines += 1
        if self._faces > self.max_triangles:
            raise ValidationFailed("mesh has more triangles than allowed")

    def _check_obj_face(self, text: bytes) -> None:
        refs = text.split()[1:]
        if len(refs) < 3:
            raise ValidationFailed("OBJ face with fewer than 3 vertices")
        for ref in refs:
            head = ref.split(b"/", 1)[0]
            try:
                index = int(head)
            except ValueError:
                raise ValidationFailed("OBJ face with a malformed vertex index") from None
            if index == 0 or abs(index) > self._vertices:
                raise ValidationFailed("OBJ face refers to a vertex that does not exist")
        self._faces += len(refs) - 2

    # -- result ---------------------------------------------------------------------
    def _result(self) -> MeshInfo:
        if self.decided == "stl-binary":
            if self.size != 84 + 50 * self._stl_triangles:
                raise ValidationFailed("binary STL size does not match its triangle count")
            return MeshInfo("stl", "binary", 3 * self._stl_triangles, self._stl_triangles)
        if self.decided == "stl-ascii":
            if self._faces < 1 or self._vertices != 3 * self._faces:
                raise ValidationFailed("ASCII STL must hold facets of 3 vertices each")
            return MeshInfo("stl", "ascii", self._vertices, self._faces)
        if self.decided == "obj":
            if self._faces < 1:
                raise ValidationFailed("OBJ holds no face")
            return MeshInfo("obj", "ascii", self._vertices, self._faces)
        assert self._ply is not None
        encoding, vertices, faces, header_size = self._ply
        if encoding == "ascii":
            if self._ply_body_lines < vertices + faces:
                raise ValidationFailed("PLY holds fewer elements than its header declares")
        elif self.size - header_size < vertices * 12 + faces * 13:
            raise ValidationFailed("binary PLY is shorter than its header declares")
        return MeshInfo("ply", encoding, vertices, faces)
