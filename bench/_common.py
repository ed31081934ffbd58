"""What every benchmark prints: the machine it ran on, and results as aligned tables.

Benchmarks run as scripts (`python bench/bench_x.py`), so this module is imported as
`_common` from their folder: the repository root stays off `sys.path`, where its
`operator/` folder would shadow the standard library.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ram_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0.0


def hardware() -> str:
    """One line: CPU model, logical cores, RAM, Python."""
    return (
        f"{cpu_model()}, {os.cpu_count()} logical cores, {ram_gib():.1f} GiB RAM, "
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (Markdown-compatible), columns sized to their widest cell."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
