"""Writing a case's outputs: result.json, coloured PLYs, PNG occlusal views, one HTML report."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner.io import write_ply
from mesial.aligner.occlusion import arch_frame
from mesial.aligner.pipeline import AlignmentResult, result_document
from mesial.aligner.render import render_orthographic
from mesial.aligner.transforms import transform_points

FloatArray = NDArray[np.float64]
# Colour range of the distance maps, mm: red is penetration, blue is 1 mm apart or more.
COLOUR_RANGE_MM = (-0.2, 1.0)
COLOUR_MAP = "turbo_r"


def distance_colours(distance: FloatArray) -> NDArray[np.uint8]:
    """RGB ``(n, 3)`` uint8 for signed distances ``(n,)`` in mm."""
    import matplotlib

    low, high = COLOUR_RANGE_MM
    rgba = matplotlib.colormaps[COLOUR_MAP]((np.clip(distance, low, high) - low) / (high - low))
    return np.asarray(np.round(rgba[:, :3] * 255), dtype=np.uint8)


def occlusal_view_png(
    vertices: FloatArray, faces: NDArray[np.int64], distance: FloatArray, view: FloatArray, up: FloatArray, title: str
) -> bytes:
    """PNG bytes of an orthographic occlusal view coloured by distance, with a colour bar in mm."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    image = render_orthographic(vertices, faces, distance, view, up)
    low, high = COLOUR_RANGE_MM
    cmap = matplotlib.colormaps[COLOUR_MAP]
    rgba = cmap((np.clip(np.nan_to_num(image.image, nan=high), low, high) - low) / (high - low))
    rgba[..., :3] *= np.nan_to_num(image.shade, nan=1.0)[..., None]
    rgba[np.isnan(image.image)] = (1.0, 1.0, 1.0, 1.0)
    figure, axes = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    axes.imshow(rgba, extent=image.extent)
    axes.set_title(title)
    axes.set_xlabel("mm")
    axes.set_ylabel("mm")
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(low, high), cmap=cmap)
    figure.colorbar(mappable, ax=axes, label="signed distance to antagonist (mm)", shrink=0.8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def write_outputs(result: AlignmentResult, out: str | Path, version: str) -> dict[str, Path]:
    """Write result.json and, for an analysed case, PLYs, PNG views and report.html.

    Returns
    -------
    paths : dict of name -> Path
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = result_document(result, version)
    paths = {"result": out / "result.json"}
    images: dict[str, bytes] = {}
    occ = result.occlusion
    if occ is not None and result.upper_to_bite is not None and result.lower_to_bite is not None:
        placed = {
            "upper": transform_points(result.scans["upper"].vertices, result.upper_to_bite),
            "lower": transform_points(result.scans["lower"].vertices, result.lower_to_bite),
        }
        frame = arch_frame(placed["upper"], placed["lower"])
        for arch, vertices in placed.items():
            distance = occ.after[arch].distance
            faces = result.scans[arch].faces
            paths[f"{arch}_ply"] = out / f"{arch}_aligned.ply"
            write_ply(
                paths[f"{arch}_ply"], vertices, faces, colors=distance_colours(distance), scalars={"distance": distance}
            )
            look = frame.superior if arch == "upper" else -frame.superior  # look at the occlusal surface
            images[arch] = occlusal_view_png(
                vertices, faces, distance, look, frame.anterior, f"{arch} arch, occlusal view"
            )
            paths[f"{arch}_png"] = out / f"{arch}_occlusal.png"
            paths[f"{arch}_png"].write_bytes(images[arch])
        document["artifacts"] = [*sorted(p.name for p in paths.values()), "report.html"]
    paths["result"].write_text(json.dumps(document, indent=2) + "\n")
    paths["report"] = out / "report.html"
    paths["report"].write_text(_html(document, images))
    return paths


def _html(document: dict[str, Any], images: dict[str, bytes]) -> str:
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
        f"<figcaption>{arch}</figcaption></figure>"
        for arch, png in images.items()
    )
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in document["reasons"])
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in document["timings_s"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mesial occlusion report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}figure{{display:inline-block;margin:0 1em}}
.status{{font-size:1.4em;font-weight:bold}}</style></head><body>
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
