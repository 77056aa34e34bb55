"""The tensor lists the derive hub's checkpoints are written from (tests/fixtures/derive-tensors)
are what the installed transformers builds from each config on the meta device: recorded so the
fast loop needs no transformers, checked here (slow) so they cannot drift from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.derive.headers import RECORDED, meta_tensors, record_sources, recorded_tensors

pytestmark = pytest.mark.slow  # imports transformers and builds every architecture (meta device)


def test_every_recorded_list_is_what_transformers_builds(tmp_path: Path) -> None:
    sources = record_sources(tmp_path)
    assert sorted(p.stem for p in RECORDED.glob("*.json")) == sorted(sources)
    for name, folder in sources.items():
        recorded = recorded_tensors(name)
        assert len(recorded) > 100, name  # a whole model, not a stub
        assert recorded == meta_tensors(folder), (
            f"{name}: recorded tensors differ from this transformers'; refresh with "
            "`python -m tests.derive.headers`"
        )
