"""The fit estimate against every public observation in provision/data/observations.toml.

Each row is computed for exactly the setup it describes (stack, task, tokens, card). Rows our
estimate does not match carry `known_miss` with the reason; this test checks both directions, so
a model change that fixes a miss must also drop its marker (and regenerate docs/calibration.md).
"""

from __future__ import annotations

import pytest

from provision.calibration import AIM, compare, observations, summary, table
from provision.profiles import list_profiles

ROWS = observations()


@pytest.mark.parametrize("obs", ROWS, ids=[o["id"] for o in ROWS])
def test_observation(obs):
    c = compare(obs)
    if not c.modelled:
        assert obs["stack"] not in ("transformers", "vllm", "ms-swift"), (
            "our own stacks are modelled"
        )
        return
    if obs.get("known_miss"):
        assert c.within_aim is False, f"{c.id} now matches: remove its known_miss"
        return
    if c.error is not None:
        assert abs(c.error) <= AIM, f"{c.id}: ours {c.estimate_gib:.2f} GiB vs {c.observed_gib}"
    if c.verdict_agrees is not None:
        assert c.verdict_agrees, f"{c.id}: we say {c.verdict}, it was {c.outcome}"
    if obs.get("bound") == "upper":
        assert c.estimate_gib <= obs["vram_gib"]


def test_every_oom_on_a_named_card_is_predicted():
    """The verdicts that matter most: where a public run ran out of memory, we say so too."""
    for obs in ROWS:
        if obs.get("outcome") == "oom" and "gpu" in obs and not obs.get("known_miss"):
            assert compare(obs).verdict == "does not fit", obs["id"]


def test_rows_name_known_profiles_and_sources():
    names = {p.name for p in list_profiles()}
    for obs in ROWS:
        assert obs["profile"] in names and obs["src"] and obs["what"]
        assert obs["kind"] in ("measured", "reported", "estimate", "vendor-claim")


def test_summary_and_readme_table_agree():
    s = summary()
    assert s["observations"] == len(ROWS)
    disagreeing = [o for o in ROWS if compare(o).verdict_agrees is False]
    assert s["verdicts_agree"] == s["with_a_verdict"] - len(disagreeing)
    assert all(o.get("known_miss") for o in disagreeing)
    rendered = table()
    for obs in ROWS:
        assert obs["id"] in rendered
