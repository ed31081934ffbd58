"""The one compiled part of Mesial: the aligner's mesh-query kernel (everything else is in pyproject.toml).

``aligner/_meshquery.c`` (and ``aligner/_nearest.c``, the global step's nearest-sample tree,
``aligner/_raster.c``, the views' z-buffer, ``aligner/_clean.c``, validation's cleaning, ``aligner/_field.c``,
the strip search's mean scores, and ``aligner/_prep.c``, the registration's preprocessing, in the same
library) is plain C99 with POSIX threads and no Python headers; the
aligner loads the built library with ctypes (``aligner/_meshquery.py``, ``aligner/_nearest.py``, ``aligner/_raster.py``,
``aligner/_clean.py``, ``aligner/_field.py``, ``aligner/_features.py``, ``aligner/_anatomy.py``). It is declared as an
extension module so that setuptools compiles it in every install (``pip install -e .``
places it beside the source, a wheel carries it) with the compiler Python was built with.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mesial.aligner._meshquery_lib",
            sources=[
                "aligner/_meshquery.c",
                "aligner/_nearest.c",
                "aligner/_raster.c",
                "aligner/_clean.c",
                "aligner/_field.c",
                "aligner/_prep.c",
            ],
            extra_compile_args=["-std=c99", "-O2", "-pthread"],
            extra_link_args=["-pthread"],
            libraries=["m"],
        )
    ]
)
