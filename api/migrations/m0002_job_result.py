"""Jobs keep the aligner's verdict (``ok``, ``not_confident``, ``invalid_input``) apart from their state.

A job whose alignment ran to the end but was not confident has succeeded as a job: its
report and ``result.json`` exist and are worth reading. ``state`` says whether the job
ran; ``result`` says what the alignment concluded ('' until known).
"""

from __future__ import annotations

_SQL = "ALTER TABLE jobs ADD COLUMN result VARCHAR(16) NOT NULL DEFAULT '';\n"

SQL = {"postgres": _SQL, "sqlite": _SQL}
