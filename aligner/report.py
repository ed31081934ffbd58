"""Writing a case's outputs: result.json first, then coloured PLYs, PNG occlusal views, one HTML report.

``result.json`` (the verdict) is written before anything else, atomically, so a reader
that sees it sees it whole and never waits for the pictures. The pictures need no
plotting library: the rendered image (:mod:`~mesial.aligner.render`) is coloured by :data:`COLOUR_STOPS` and encoded by
:func:`png_bytes` (zlib); the HTML report carries the title, the scale and the colour
legend around them.
"""

from __future__ import annotations

import base64
import html
import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner.io import write_ply
from mesial.aligner.occlusion import arch_frame
from mesial.aligner.pipeline import AlignmentResult, one_blas_thread, result_document
from mesial.aligner.registration import ARCHES
from mesial.aligner.render import render_orthographic
from mesial.aligner.transforms import transform_points

FloatArray = NDArray[np.float64]
# Colour range of the distance maps, mm: red is penetration, blue is 1 mm apart or more.
COLOUR_RANGE_MM = (-0.2, 1.0)
# Signed distance (mm) -> RGB, interpolated linearly between the stops: dark red inside
# the antagonist, red to orange to yellow through the contact band, then green to blue.
COLOUR_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (-0.2, (120, 0, 30)),
    (0.0, (220, 30, 30)),
    (0.1, (250, 140, 50)),
    (0.25, (250, 220, 110)),
    (0.5, (150, 215, 180)),
    (0.75, (60, 170, 200)),
    (1.0, (40, 50, 150)),
)
COLOUR_BAR_PIXELS = 24  # width of the colour bar at the right of each PNG


def distance_colours(distance: FloatArray) -> NDArray[np.uint8]:
    """RGB ``(n, 3)`` uint8 for signed distances ``(n,)`` in mm (clipped to :data:`COLOUR_RANGE_MM`)."""
    values = np.clip(np.asarray(distance, dtype=np.float64), *COLOUR_RANGE_MM)
    stops = np.array([value for value, _ in COLOUR_STOPS])
    colours = np.array([rgb for _, rgb in COLOUR_STOPS], dtype=np.float64)
    rgb = np.stack([np.interp(values, stops, colours[:, c]) for c in range(3)], axis=-1)
    return np.asarray(np.round(rgb), dtype=np.uint8)


def png_bytes(rgb: NDArray[np.uint8], text: dict[str, str] | None = None) -> bytes:
    """A PNG file of an ``(h, w, 3)`` uint8 RGB image, with optional ``tEXt`` entries (Latin-1)."""
    height, width, _ = rgb.shape
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # filter byte 0 (None) per row
    rows[:, 1:] = rgb.reshape(height, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    for key, value in (text or {}).items():
        out += chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", errors="replace"))
    return out + chunk(b"IDAT", zlib.compress(rows.data, 6)) + chunk(b"IEND", b"")


def occlusal_view_png(
    vertices: FloatArray,
    faces: NDArray[np.int64],
    distance: FloatArray,
    view: FloatArray,
    up: FloatArray,
    title: str,
) -> tuple[bytes, float]:
    """PNG bytes of an orthographic occlusal view coloured by distance, with a colour bar; and its pixel size (mm).

    White where no surface is seen; shaded by the surface's slope; the colour bar at the
    right runs from :data:`COLOUR_RANGE_MM`'s high end (top) to its low end (bottom).
    """
    image = render_orthographic(vertices, faces, distance, view, up)
    seen = ~np.isnan(image.image)
    height, width = image.image.shape
    low, high = COLOUR_RANGE_MM
    # white where no surface is seen, the image at the left, a white gap, the colour bar at the right
    picture = np.full((height, width + 8 + COLOUR_BAR_PIXELS, 3), 255, dtype=np.uint8)
    shaded = distance_colours(image.image[seen]) * image.shade[seen][:, None]  # only the pixels seen
    picture[:, :width][seen] = np.round(shaded)
    picture[:, width + 8 :] = distance_colours(np.linspace(high, low, height))[:, None, :]
    left, right, _, _ = image.extent
    pixel_mm = (right - left) / image.image.shape[1]
    description = (
        f"{title}; signed distance to the antagonist, {low:g} mm (bottom of the bar, inside) to {high:g} mm "
        f"(top, apart); 1 pixel = {pixel_mm:.3f} mm"
    )
    return png_bytes(picture, {"Title": title, "Description": description, "Software": "Mesial"}), pixel_mm


def write_result(result: AlignmentResult, out: str | Path, version: str) -> Path:
    """Write ``result.json`` (atomically: a reader sees all of it or none) and return its path.

    The document lists the artifacts :func:`write_artifacts` writes next.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = result_document(result, version)
    if _analysed(result):
        document["artifacts"] = sorted(
            [
                *(f"{arch}_aligned.ply" for arch in ARCHES),
                *(f"{arch}_occlusal.png" for arch in ARCHES),
                "report.html",
                "result.json",
            ]
        )
    path = out / "result.json"
    partial = out / ".result.json.partial"
    partial.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(partial, path)
    return path


def _analysed(result: AlignmentResult) -> bool:
    return result.occlusion is not None and result.upper_to_bite is not None and result.lower_to_bite is not None


@one_blas_thread
def write_artifacts(result: AlignmentResult, out: str | Path) -> dict[str, Path]:
    """Write the PLYs and PNG views of an analysed case and ``report.html`` (after :func:`write_result`).

    The two arches are written on two threads (the rendering and the compression release
    the GIL). BLAS runs on one thread, as in :func:`~mesial.aligner.pipeline.align_scans`:
    its threads, spinning beside the views' ray casts (as they were) on 2 cores, made a small
    product (placing 130 000 vertices) cost up to 0.1 s at load 6-12; the outputs took 10 % more
    CPU, for the same files.
    """
    out = Path(out)
    document = json.loads((out / "result.json").read_text())
    paths: dict[str, Path] = {}
    images: dict[str, tuple[bytes, float]] = {}
    occ = result.occlusion
    if occ is not None and result.upper_to_bite is not None and result.lower_to_bite is not None:
        placed = {
            "upper": transform_points(result.scans["upper"].vertices, result.upper_to_bite),
            "lower": transform_points(result.scans["lower"].vertices, result.lower_to_bite),
        }
        frame = occ.frame or arch_frame(placed["upper"], placed["lower"])  # (analyse's: not computed again)

        def one(arch: str) -> tuple[bytes, float]:
            distance = occ.after[arch].distance
            faces = result.scans[arch].faces
            write_ply(
                out / f"{arch}_aligned.ply", placed[arch], faces, colors=distance_colours(distance),
                scalars={"distance": distance},
            )  # fmt: skip
            look = frame.superior if arch == "upper" else -frame.superior  # look at the occlusal surface
            title = f"{arch} arch, occlusal view"
            png = occlusal_view_png(placed[arch], faces, distance, look, frame.anterior, title)
            (out / f"{arch}_occlusal.png").write_bytes(png[0])
            return png

        with ThreadPoolExecutor(max_workers=2) as pool:
            images = dict(zip(ARCHES, pool.map(one, ARCHES), strict=True))
        for arch in ARCHES:
            paths[f"{arch}_ply"] = out / f"{arch}_aligned.ply"
            paths[f"{arch}_png"] = out / f"{arch}_occlusal.png"
    paths["report"] = out / "report.html"
    paths["report"].write_text(_html(document, images))
    return paths


def write_outputs(result: AlignmentResult, out: str | Path, version: str) -> dict[str, Path]:
    """Write result.json first, then (for an analysed case) PLYs, PNG views and report.html.

    Returns
    -------
    paths : dict of name -> Path
    """
    paths = {"result": write_result(result, out, version)}
    paths.update(write_artifacts(result, out))
    return paths


def _legend() -> str:
    low, high = COLOUR_RANGE_MM
    stops = ", ".join(f"rgb{rgb} {100 * (value - low) / (high - low):.1f}%" for value, rgb in COLOUR_STOPS)
    ticks = "".join(
        f'<span style="left:{100 * (value - low) / (high - low):.1f}%">{value:g}</span>' for value, _ in COLOUR_STOPS
    )
    return (
        f'<div class="legend"><div class="bar" style="background:linear-gradient(to right, {stops})"></div>'
        f"{ticks}</div><p>signed distance to the antagonist, mm: below 0 inside it (penetration), "
        f"{high:g} mm and above drawn as {high:g} mm</p>"
    )


def _html(document: dict[str, Any], images: dict[str, tuple[bytes, float]]) -> str:
    contact = document.get("params", {}).get("occlusion", {}).get("contact_threshold_mm")
    threshold = f"{contact:g} mm" if isinstance(contact, int | float) else "not measured"
    rows = []
    for section in ("before", "after"):
        for arch, values in document.get("occlusion", {}).get(section, {}).items():
            regions = ", ".join(f"{k} {v:.2f}" for k, v in values["area_by_region_mm2"].items())
            rows.append(
                f"<tr><td>{section}</td><td>{arch}</td><td>{values['contact_area_mm2']:.2f}</td>"
                f"<td>{regions}</td><td>{values['patches']}</td><td>{values['max_penetration_mm']:.3f}</td></tr>"
            )
    figures = "".join(
        f'<figure><img alt="{arch} occlusal view" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{arch} arch, occlusal view (1 pixel = {pixel_mm:.3f} mm)</figcaption></figure>"
        for arch, (png, pixel_mm) in images.items()
    )
    if figures:
        figures = "<h2>Distance to the antagonist</h2>" + _legend() + figures
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in document["reasons"])
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in document["timings_s"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mesial occlusion report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}figure{{display:inline-block;margin:0 1em}}
.status{{font-size:1.4em;font-weight:bold}}
.legend{{position:relative;width:36em;height:2.6em;font-size:.85em}}
.legend .bar{{height:1.2em;border:1px solid #999}}.legend span{{position:absolute;top:1.4em;transform:translateX(-50%)}}</style></head><body>
<h1>Occlusion report</h1>
<p class="status">Status: {html.escape(document["status"])}</p>
<ul>{reasons}</ul>
<p>Mesial {html.escape(document["software"]["version"])}; frame: first bite scan; timings: {timings}</p>
<h2>Contacts (threshold {threshold})</h2>
<table><tr><th>stage</th><th>arch</th><th>contact area mm²</th><th>by region mm²</th>
<th>patches</th><th>max penetration mm</th></tr>{"".join(rows)}</table>
{figures}
<h2>Result document</h2><pre>{html.escape(json.dumps(document, indent=1)[:20000])}</pre>
</body></html>
"""
