"""Importing the aligner first starts OpenBLAS with one thread, unless the process chose otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CODE = (
    "import json, os, mesial.aligner\n"
    "import numpy  # (after the aligner's package, which no longer imports it itself)\n"
    "from threadpoolctl import threadpool_info\n"
    "print(json.dumps([os.environ.get('OPENBLAS_NUM_THREADS'), [i['num_threads'] for i in threadpool_info()"
    " if i['user_api'] == 'blas']]))"
)


def _run(env: dict[str, str]) -> tuple[str | None, list[int]]:
    result = subprocess.run([sys.executable, "-P", "-c", CODE], capture_output=True, text=True, check=True, env=env)
    chosen, threads = json.loads(result.stdout)
    return chosen, [int(n) for n in threads]


def test_the_aligner_starts_blas_with_one_thread() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    chosen, threads = _run(env)
    assert chosen == "1"
    assert threads == [1]


def test_a_choice_of_the_process_is_kept() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    chosen, _ = _run({**env, "OPENBLAS_NUM_THREADS": "2"})
    assert chosen == "2"
