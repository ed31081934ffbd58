"""The aligner: mesh I/O, bite registration, occlusal analysis and reports (pure library)."""
