import mesial.aligner


def test_public_names():
    assert sorted(mesial.aligner.__all__) == [
        "AlignParams",
        "AlignmentResult",
        "OcclusionParams",
        "Scan",
        "align_scans",
        "load_scan",
        "scan_from_arrays",
    ]
    for name in mesial.aligner.__all__:
        assert hasattr(mesial.aligner, name)
