"""The occlusal relations the real-anatomy benchmark builds (``bench/_real_cases.relate``), on generated arches."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from mesial.aligner.rangescan import ArchPath
from mesial.aligner.samples import build_arches

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def rc() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("_real_cases")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def natural(rc: ModuleType) -> object:
    upper, lower, _ = build_arches(5, 20_000)
    both = np.vstack([upper.vertices, lower.vertices])
    return rc.Occluded("generated 5", upper, lower, ArchPath.from_points(both), (0.0, 0.0), 0.0)


def _seated(rc: ModuleType, related: object) -> None:
    """Within the penetration tolerance, and 0.1 mm lower it would not be: the upper rests on the lower."""
    upper, lower = related.occluded.upper, related.occluded.lower  # type: ignore[attr-defined]
    assert rc._deepest(upper.vertices, lower) <= rc.MAX_PENETRATION_MM + 1e-3
    assert rc._deepest(upper.vertices - [0.0, 0.0, 0.1], lower) > rc.MAX_PENETRATION_MM
    assert related.occluded.penetration_mm <= rc.MAX_PENETRATION_MM + 1e-3  # type: ignore[attr-defined]


def test_natural_only_reseats(rc: ModuleType, natural: object) -> None:
    related = rc.relate(natural, rc.relation("natural"))
    moved = related.occluded.upper.vertices - natural.upper.vertices  # type: ignore[attr-defined]
    assert np.abs(moved[:, :2]).max() < 1e-9
    assert np.ptp(moved[:, 2]) < 1e-9 and abs(moved[0, 2]) < 0.5  # a vertical drop or lift, small
    _seated(rc, related)


@pytest.mark.parametrize("name", ["class II +8 mm", "crossbite right 3.5 mm", "yaw -15°"])
def test_rigid_relations_move_the_upper_in_the_plane_then_seat_it(rc: ModuleType, natural: object, name: str) -> None:
    rel = rc.relation(name)
    related = rc.relate(natural, rel)
    before, after = natural.upper.vertices, related.occluded.upper.vertices  # type: ignore[attr-defined]
    lower = natural.lower.vertices  # type: ignore[attr-defined]
    centre = lower[:, :2].mean(axis=0)
    turn = np.radians(rel.yaw_deg)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    expected = (before[:, :2] - centre) @ rotation.T + centre + [rel.transverse_mm, rel.anterior_mm]
    assert np.abs(after[:, :2] - expected).max() < 1e-6
    assert np.ptp(after[:, 2] - before[:, 2]) < 1e-6  # then only dropped (or lifted) as a whole
    np.testing.assert_array_equal(related.occluded.lower.vertices, lower)
    _seated(rc, related)


@pytest.mark.parametrize("open_mm", [4.0])
def test_open_bite_lifts_the_front_about_the_molars(rc: ModuleType, natural: object, open_mm: float) -> None:
    related = rc.relate(natural, rc.Relation("open", open_mm=open_mm))
    before, after = natural.upper.vertices, related.occluded.upper.vertices  # type: ignore[attr-defined]
    crown = before[:, 2] < rc.CROWN_BAND_MM
    front, back = np.argmax(np.where(crown, before[:, 1], -np.inf)), np.argmin(np.where(crown, before[:, 1], np.inf))
    rise = (after[front, 2] - before[front, 2]) - (after[back, 2] - before[back, 2])
    assert rise == pytest.approx(open_mm, abs=0.1)
    closed = rc.relate(natural, rc.relation("natural")).incisal_opening_mm
    assert related.incisal_opening_mm - closed == pytest.approx(open_mm, abs=0.6)  # the incisors are near the front
    _seated(rc, related)


def test_shortened_arches_lose_only_their_posterior_ends(rc: ModuleType, natural: object) -> None:
    related = rc.relate(natural, rc.relation("shortened both arches, right"))
    for before, after, up in ((natural.upper, related.occluded.upper, False),  # type: ignore[attr-defined]
                              (natural.lower, related.occluded.lower, True)):  # type: ignore[attr-defined]  # fmt: skip
        v = before.vertices
        crown = v[:, 2] > -rc.CROWN_BAND_MM if up else v[:, 2] < rc.CROWN_BAND_MM
        end = v[crown & (v[:, 0] > 0), 1].min()
        kept = after.vertices
        assert len(kept) < len(v)
        assert not ((kept[:, 0] > 0) & (kept[:, 1] < end + rc.MOLAR_MM)).any()  # the right molar's length is gone
        left = v[:, 0] < 0
        assert np.sum(kept[:, 0] < 0) >= np.sum(left) - 5  # the left side is kept (bar faces crossing x = 0)
    _seated(rc, related)


def test_bilateral_crossbite_narrows_the_posterior_upper_only(rc: ModuleType, natural: object) -> None:
    narrowed = rc._narrow(natural.upper, 3.5)  # type: ignore[attr-defined]
    v, w = natural.upper.vertices, narrowed.vertices  # type: ignore[attr-defined]
    front, back = v[:, 1].max(), v[:, 1].min()
    teeth = np.abs(v[:, 0]) > 15
    posterior = teeth & (v[:, 1] < front - 0.6 * (front - back))
    inward = np.abs(v[:, 0]) - np.abs(w[:, 0])
    assert inward[posterior] == pytest.approx(3.5, abs=0.01)
    assert np.abs(inward[v[:, 1] > front - 1.0]).max() < 0.2  # the incisors stay
    np.testing.assert_array_equal(w[:, 1:], v[:, 1:])


def test_unknown_relation_is_refused(rc: ModuleType) -> None:
    with pytest.raises(ValueError, match="unknown relation"):
        rc.relation("class IV")


@pytest.mark.parametrize("name", ["crossbite left 3.5 mm", "shortened both arches, right"])
def test_bites_are_cut_on_both_sides_of_a_moved_pair(rc: ModuleType, natural: object, name: str) -> None:
    related = rc.relate(natural, rc.relation(name))
    case = rc.bite_case(related.occluded, 7, simulator="strip", per_side=True)
    assert len(case.bites) == 2
    for bite in case.bites:
        extent = np.ptp(bite.vertices @ np.linalg.svd(bite.vertices - bite.vertices.mean(axis=0))[2][0])
        assert len(bite.faces) > 1000 and extent > 20.0  # canine to the last molar, each side
