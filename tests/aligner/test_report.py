"""The outputs' encoders: PNG without a plotting library, the distance colours, result.json first."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from mesial.aligner.report import COLOUR_RANGE_MM, COLOUR_STOPS, distance_colours, png_bytes


def _decode(png: bytes) -> tuple[np.ndarray, dict[bytes, bytes]]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    at, idat, text, size = 8, b"", {}, (0, 0)
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        assert struct.unpack(">I", png[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + data)
        if kind == b"IHDR":
            size = struct.unpack(">II", data[:8])
            assert data[8:] == bytes([8, 2, 0, 0, 0])  # 8-bit RGB, no interlace
        elif kind == b"IDAT":
            idat += data
        elif kind == b"tEXt":
            key, value = data.split(b"\0", 1)
            text[key] = value
        at += 12 + length
    width, height = size
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3), text


def test_png_holds_the_image_and_its_text() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image, text = _decode(png_bytes(rgb, {"Title": "upper arch", "Description": "1 pixel = 0.100 mm"}))
    assert np.array_equal(image, rgb)
    assert text == {b"Title": b"upper arch", b"Description": b"1 pixel = 0.100 mm"}


def test_distance_colours_follow_the_stops_and_clip() -> None:
    values = np.array([value for value, _ in COLOUR_STOPS])
    assert distance_colours(values).tolist() == [list(rgb) for _, rgb in COLOUR_STOPS]
    low, high = COLOUR_RANGE_MM
    assert distance_colours(np.array([low - 5, high + 5])).tolist() == [
        list(COLOUR_STOPS[0][1]),
        list(COLOUR_STOPS[-1][1]),
    ]


def test_the_outputs_run_with_one_blas_thread(tmp_path, monkeypatch) -> None:
    """As the stages do (pipeline.one_blas_thread): BLAS threads would spin beside the ray casts'."""
    from threadpoolctl import threadpool_info

    from mesial.aligner import report
    from mesial.aligner.pipeline import AlignmentResult

    result = AlignmentResult("not_confident", ("a reason",), {}, None, None, None, None, {"validate": 0.1})
    report.write_result(result, tmp_path, "0")
    seen: list[list[int]] = []
    html = report._html

    def recording(*args: object) -> str:
        seen.append([pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"])
        return html(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(report, "_html", recording)
    paths = report.write_artifacts(result, tmp_path)
    assert "<li>a reason</li>" in paths["report"].read_text()
    assert seen and seen[0] and set(seen[0]) == {1}
