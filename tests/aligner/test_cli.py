from __future__ import annotations

import json

from click.testing import CliRunner

from mesial.cli import root


def test_samples_then_invalid_input_exit_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        root, ["samples", "generate", "--out", str(tmp_path / "c"), "--seed", "1", "--vertices", "8000", "--one-sided"]
    )
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp_path / "c" / "truth.json").read_text())
    assert set(truth["file_to_bite"]) == {"upper", "lower", "bite"}
    (tmp_path / "empty.stl").write_bytes(b"")
    result = runner.invoke(
        root,
        ["align", "--upper", str(tmp_path / "empty.stl"), "--lower", str(tmp_path / "c" / "lower.ply"),
         "--bite", str(tmp_path / "c" / "bite.stl"), "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "upper scan: the file is empty" in result.output
    document = json.loads((tmp_path / "o" / "result.json").read_text())
    assert document["status"] == "invalid_input"


def test_align_generated_case_exit_code_matches_status(tmp_path):
    runner = CliRunner()
    runner.invoke(root, ["samples", "generate", "--out", str(tmp_path / "c"), "--seed", "2", "--vertices", "15000"])
    case = tmp_path / "c"
    result = runner.invoke(
        root,
        ["align", "--upper", str(case / "upper.ply"), "--lower", str(case / "lower.ply"),
         "--bite", str(case / "bite.stl"), "--bite", str(case / "bite2.stl"), "--out", str(tmp_path / "o"), "--json"],
    )  # fmt: skip
    document = json.loads((tmp_path / "o" / "result.json").read_text())
    assert {"ok": 0, "not_confident": 3}[document["status"]] == result.exit_code
    assert document["frame"] == "bite"
    assert len(document["inputs"]["upper"]["sha256"]) == 64
    # the verdict first: printed as written, and written before every picture
    assert json.loads(result.stdout) == document
    if document["status"] == "ok":
        written = (tmp_path / "o" / "result.json").stat().st_mtime_ns
        artifacts = [tmp_path / "o" / name for name in document["artifacts"] if name != "result.json"]
        assert len(artifacts) == 5 and all(written <= path.stat().st_mtime_ns for path in artifacts)


def test_report_names_the_contact_threshold() -> None:
    from mesial.aligner.report import _html

    document = {"status": "ok", "reasons": [], "software": {"version": "0"}, "timings_s": {},
                "params": {"occlusion": {"contact_threshold_mm": 0.15}}}  # fmt: skip
    assert "Contacts (threshold 0.15 mm)" in _html(document, {})
    assert "Contacts (threshold not measured)" in _html({**document, "params": {}}, {})


def test_json_output_is_the_document_and_the_message_plain_text(tmp_path):
    (tmp_path / "empty.stl").write_bytes(b"")
    (tmp_path / "other.stl").write_bytes(b"")
    result = CliRunner().invoke(
        root,
        ["align", "--upper", str(tmp_path / "empty.stl"), "--lower", str(tmp_path / "other.stl"),
         "--bite", str(tmp_path / "other.stl"), "--out", str(tmp_path / "o"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert json.loads(result.stdout) == json.loads((tmp_path / "o" / "result.json").read_text())
    assert "invalid input: upper scan: the file is empty" in result.stderr  # no rich markup beside --json
    assert "[red]" not in result.stderr


def test_the_limits_come_from_the_settings_when_the_environment_sets_them(tmp_path, monkeypatch, small_case):
    """``mesial align`` reads its input limits without the settings' models unless the
    environment (or a .env file) could change them; then the settings decide."""
    from mesial.aligner.io import write_ply
    from mesial.common.limits import MAX_SCAN_BYTES, MAX_TRIANGLES, aligner_limits
    from mesial.common.settings import AlignerSettings, get_settings

    monkeypatch.chdir(tmp_path)
    defaults = AlignerSettings()
    assert aligner_limits() == (MAX_SCAN_BYTES, MAX_TRIANGLES) == (defaults.max_scan_bytes, defaults.max_triangles)
    monkeypatch.setenv("mesial_aligner__max_triangles", "1000")  # case-insensitive, as the settings read it
    assert aligner_limits() == (MAX_SCAN_BYTES, 1000)
    monkeypatch.delenv("mesial_aligner__max_triangles")
    get_settings.cache_clear()  # read once per process: this test plays two processes
    (tmp_path / ".env").write_text("MESIAL_ALIGNER__MAX_SCAN_BYTES=2048\n")
    assert aligner_limits() == (2048, MAX_TRIANGLES)
    write_ply(tmp_path / "upper.ply", small_case.upper.vertices, small_case.upper.faces)
    result = CliRunner().invoke(
        root,
        ["align", "--upper", "upper.ply", "--lower", "upper.ply", "--bite", "upper.ply", "--out", "o", "--json"],
    )
    assert result.exit_code == 2
    assert "the limit is 2,048" in json.loads((tmp_path / "o" / "result.json").read_text())["reasons"][0]
    get_settings.cache_clear()
