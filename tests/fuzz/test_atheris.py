"""Coverage-guided fuzzing with atheris (libFuzzer), a few seconds per parser in ``make test``.

Each target of tests/fuzz/atheris_targets.py runs in its own process from a seed corpus; libFuzzer
exits non-zero, with the crashing input, if a parser raises anything but its documented error or
runs out of time or memory. ``ATHERIS_SECONDS`` sets the time per target (longer runs:
``python -m tests.fuzz.atheris_targets <target> -max_total_time=600``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

from tests.fuzz.atheris_targets import TARGETS, seeds

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("ATHERIS_SECONDS", "1"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_coverage_guided_fuzzing_finds_no_crash(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, seed in enumerate(seeds(target)):
        (corpus / f"seed{index}").write_bytes(seed)
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.atheris_targets", target,
         f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=2048", "-max_len=4096",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120,
    )  # fmt: skip
    stats = re.findall(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)", done.stderr)
    runs, coverage, _, corpus_size = stats[-1] if stats else ("?", "?", "?", "?")
    print(
        f"atheris {target}: {runs} inputs in {SECONDS}s, coverage {coverage}, corpus {corpus_size}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
