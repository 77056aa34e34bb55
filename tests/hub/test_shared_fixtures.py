"""The shared fixtures other tests use (tests/conftest.py): a hub and the clients pointed at it."""

from __future__ import annotations

from provision.hub import download_profile
from provision.profiles import load_profile
from tests.hub import helpers


def test_hub_server_and_hub_client_env(hub_server, hub_client_env, tmp_path, monkeypatch):
    folder = helpers.make_repo(tmp_path / "src", {"model.safetensors": 100_000})
    commit = hub_server.add_repo("org/shared", folder)
    helpers.write_profile(tmp_path / "profiles", "shared", "org/shared")
    monkeypatch.setenv("PROVISION_PROFILES_DIR", str(tmp_path / "profiles"))
    result = download_profile(load_profile("shared"), progress=False)  # source auto
    assert result.source.endpoint == hub_server.url and result.commit == commit
    assert result.snapshot.is_relative_to(tmp_path / "hf" / "hub")
    assert (tmp_path / "locks" / "pylock.shared.toml").exists()
    assert hub_server.bytes_sent == helpers.tree_bytes(folder)
