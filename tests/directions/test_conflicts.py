"""Members that cannot share one environment: the message names who needs what, and a split.

Pin conflicts are seen without running the resolver; the split's groups are checked by real uv
resolutions (PyPI + the local torch wheel folder), as is a conflict only the resolver can see
(one member's opencv needs numpy 2, another member pins numpy 1.26).
"""

from __future__ import annotations

import subprocess

import pytest

from provision.directions import load_direction
from provision.directions.conflict import DirectionConflict
from provision.directions.lock import lock_direction
from provision.errors import CheckFailed
from tests.cli_helpers import run_cli, run_envelope
from tests.directions.helpers import TINY, lock_args, lock_kwargs, write_direction, write_profile

OLD = ["torch==2.13.0", "transformers==4.47.1", "huggingface_hub<1.0"]


@pytest.fixture
def no_resolver(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a pin conflict between two members needs no resolver run")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_pin_conflict_names_members_packages_and_split_without_resolving(dirs, no_resolver):
    write_profile(dirs.profiles, "tiny-new", infer=TINY)
    write_profile(dirs.profiles, "tiny-old", infer=OLD)
    write_direction(dirs.directions, "clash", [("tiny-new", ["infer"]), ("tiny-old", ["infer"])])
    with pytest.raises(DirectionConflict) as caught:
        lock_direction(load_direction("clash"), **lock_kwargs())
    conflict = caught.value
    assert isinstance(conflict, CheckFailed) and conflict.exit_code == 1
    text = conflict.message
    assert "Direction clash: its members cannot share one environment." in text
    assert (
        "transformers: tiny-new (infer) needs transformers==4.51.3; "
        "tiny-old (infer) needs transformers==4.47.1" in text
    )
    assert "Members that disagree: tiny-new and tiny-old." in text
    assert "Suggested split: [tiny-new] and [tiny-old]" in text
    assert "provision direction remove clash tiny-old" in conflict.hint
    assert [d.package for d in conflict.disagreements] == ["transformers"]
    assert conflict.groups == [["tiny-new"], ["tiny-old"]]
    assert not (dirs.locks / "pylock.direction-clash.toml").exists()


@pytest.mark.slow
def test_the_directions_own_packages_can_disagree_with_a_members_pin(dirs):
    write_profile(dirs.profiles, "tiny-new", infer=TINY)
    write_profile(dirs.profiles, "tiny-b", infer=TINY)
    members = [("tiny-new", ["infer"]), ("tiny-b", ["infer"])]
    write_direction(dirs.directions, "r", members, packages=["transformers<4.50"])
    with pytest.raises(DirectionConflict) as caught:
        lock_direction(load_direction("r"), **lock_kwargs())
    text = caught.value.message
    assert "the direction's packages need transformers<4.50" in text
    assert "tiny-new (infer) needs transformers==4.51.3" in text
    assert "The direction's own packages disagree with tiny-b, tiny-new" in text
    assert "Members that disagree" not in text  # the two members agree with each other
    assert caught.value.groups == [["tiny-new", "tiny-b"]]  # resolved without those packages
    assert "change `packages` in the direction file" in text


def test_a_members_own_tasks_can_disagree(dirs, no_resolver):
    write_profile(dirs.profiles, "tiny-split", infer=TINY, lora=OLD)
    write_direction(dirs.directions, "own", [("tiny-split", ["infer", "lora"])])
    with pytest.raises(DirectionConflict) as caught:
        lock_direction(load_direction("own"), **lock_kwargs())
    assert "tiny-split (infer) needs transformers==4.51.3" in caught.value.message
    assert "tiny-split (lora) needs transformers==4.47.1" in caught.value.message
    assert "tiny-split's own tasks disagree" in caught.value.message


def test_members_wanting_different_pythons_are_named(dirs, no_resolver):
    write_profile(dirs.profiles, "tiny-310", python="3.10")
    write_profile(dirs.profiles, "tiny-311")
    write_direction(dirs.directions, "py", [("tiny-310", ["infer"]), ("tiny-311", ["infer"])])
    with pytest.raises(CheckFailed) as caught:
        lock_direction(load_direction("py"), **lock_kwargs())
    assert "tiny-310/infer need Python 3.10" in caught.value.message
    assert "tiny-311/infer need Python 3.11" in caught.value.message
    assert 'python = "X.Y"' in caught.value.hint


@pytest.mark.slow
def test_split_groups_are_checked_by_resolving_them(dirs):
    write_profile(dirs.profiles, "tiny-a", infer=TINY)
    write_profile(dirs.profiles, "tiny-b", infer=[*TINY, "einops==0.8.1"])
    write_profile(dirs.profiles, "tiny-old", infer=OLD)
    members = [("tiny-a", ["infer"]), ("tiny-old", ["infer"]), ("tiny-b", ["infer"])]
    write_direction(dirs.directions, "three", members)
    code, envelope = run_envelope("direction", "lock", "three", *lock_args())
    assert code == 1 and envelope["error"]["code"] == "conflict", envelope
    conflict = envelope["result"]["conflict"]
    assert conflict["suggested_split"] == [["tiny-a", "tiny-b"], ["tiny-old"]]
    assert conflict["conflicting_members"] == [["tiny-a", "tiny-old"], ["tiny-b", "tiny-old"]]
    assert conflict["notes"] == []  # the [tiny-a, tiny-b] group was resolved, not assumed
    assert {d["package"] for d in conflict["disagreements"]} == {"transformers"}
    proc = run_cli("direction", "lock", "three", *lock_args())
    assert proc.returncode == 1
    assert "Suggested split: [tiny-a, tiny-b] and [tiny-old]" in " ".join(proc.stderr.split())


@pytest.mark.slow
def test_conflict_only_the_resolver_sees_is_explained_and_split(dirs):
    # opencv-python-headless 4.12.0.88 depends on numpy>=2,<2.3: no pin says so, uv does.
    write_profile(dirs.profiles, "tiny-cv", infer=[*TINY, "opencv-python-headless==4.12.0.88"])
    write_profile(dirs.profiles, "tiny-np", infer=[*TINY, "numpy==1.26.4"])
    write_direction(dirs.directions, "deep", [("tiny-cv", ["infer"]), ("tiny-np", ["infer"])])
    with pytest.raises(DirectionConflict) as caught:
        lock_direction(load_direction("deep"), **lock_kwargs())
    conflict = caught.value
    assert conflict.disagreements == []  # no pin says so: uv's explanation does
    text = conflict.message
    assert "numpy>=2,<2.3.0" in text
    assert "tiny-np/infer needs numpy==1.26.4" in text
    assert "tiny-cv/infer needs opencv-python-headless==4.12.0.88" in text
    assert "Members that disagree: tiny-cv and tiny-np." in text
    assert conflict.groups == [["tiny-cv"], ["tiny-np"]]
    assert "provision direction remove deep tiny-np" in conflict.hint
