"""A tiny LLaVA set up once from the local hub (the real `provision setup`), for serving, with
a tiny VQA dataset downloaded into its lock (the dataset smoke through the server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import run_json
from tests.envs.helpers import torch_wheel_dir
from tests.hub.helpers import make_vqa_dataset
from tests.servers.hub import HubServer
from tests.setup.conftest import (  # noqa: F401 - fixtures, shared with the setup tests
    PROFILE,
    REPO,
    builder_python,
    tiny_llava_folder,
    use_world_env,
    write_profile,
)

DATASET = "org/tiny-vqa"


@pytest.fixture(scope="module")
def served_world(tmp_path_factory: pytest.TempPathFactory, tiny_llava_folder: Path):  # noqa: F811
    """`provision setup` of the tiny LLaVA profile (env, lock, weights at the hub's commit,
    smoke) and `provision download --dataset` of a tiny VQA dataset into the same lock, with
    the variables a user would have set; the hub is stopped afterwards, so serving must need no
    network."""
    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp, HubServer(root / "hub") as hub:
        commit = hub.add_repo(REPO, tiny_llava_folder)
        write_profile(root / "profiles")
        env = use_world_env(mp, root, hub.url)
        rc, report = run_json(
            "setup", PROFILE, "--torch-index", str(torch_wheel_dir()), timeout=1800
        )
        assert rc == 0, report
        hub.add_repo(DATASET, make_vqa_dataset(root / "tiny-vqa"), repo_type="dataset")
        # As a user after setup: recorded for the profile's lock (this machine's record).
        rc, fetched = run_json("download", PROFILE, "--dataset", DATASET)
        assert rc == 0, fetched
        lock = root / "locks" / f"pylock.{PROFILE}.toml"
        hub.stop()
        yield {"root": root, "commit": commit, "report": report, "env": env, "lock": lock}
