"""Source names, the auto order, and concurrent probing with a short timeout."""

from __future__ import annotations

import socket
import time

import pytest

from provision.errors import ProvisionError
from provision.hub.sources import auto_candidates, choose_source, parse_source, probe
from tests.cli_helpers import run_json
from tests.servers.hub import HubServer


def test_named_sources_urls_and_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    assert parse_source("hf").endpoint == "https://huggingface.co"
    mirror = parse_source("hf-mirror")
    assert (mirror.kind, mirror.endpoint) == ("hf", "https://hf-mirror.com")
    assert (
        mirror.license_page("google/gemma-3-12b-it")
        == "https://huggingface.co/google/gemma-3-12b-it"
    )
    assert parse_source("modelscope").page("Qwen/Qwen2-VL-2B") == (
        "https://www.modelscope.cn/models/Qwen/Qwen2-VL-2B"
    )
    custom = parse_source("http://10.0.0.5:8080/")
    assert (custom.kind, custom.endpoint) == ("hf", "http://10.0.0.5:8080")
    ms = parse_source("modelscope:http://10.0.0.6")
    assert (ms.kind, ms.endpoint) == ("modelscope", "http://10.0.0.6")
    assert parse_source(str(tmp_path)).kind == "local"
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    assert parse_source("modelscope").endpoint == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hugginface", "Unknown source 'hugginface'"),
        ("/no/such/folder", "does not exist"),
        ("modelscope:ftp://x", "after 'modelscope:' comes the endpoint URL"),
    ],
)
def test_bad_sources_are_one_message(spec, message):
    with pytest.raises(ProvisionError, match=message):
        parse_source(spec)


def test_auto_order_from_the_table_env_and_hf_endpoint(monkeypatch):
    monkeypatch.delenv("PROVISION_SOURCES", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert [s.name for s in auto_candidates()] == ["hf", "hf-mirror", "modelscope"]
    assert [s.name for s in auto_candidates(has_modelscope=False)] == ["hf", "hf-mirror"]
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.com")
    assert [s.name for s in auto_candidates()] == ["hf-mirror", "hf", "modelscope"]
    monkeypatch.setenv("HF_ENDPOINT", "http://10.1.1.1")
    assert [s.name for s in auto_candidates()][0] == "http://10.1.1.1"
    monkeypatch.setenv("PROVISION_SOURCES", "modelscope,hf")
    assert [s.name for s in auto_candidates()] == ["modelscope", "hf"]


@pytest.fixture
def silent_ports():
    """Ports that accept connections and never answer: hung mirrors."""
    listeners = []
    for _ in range(3):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listeners.append(listener)
    yield [s.getsockname()[1] for s in listeners]
    for listener in listeners:
        listener.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_probes_run_concurrently_and_the_first_answering_in_order_wins(tmp_path, silent_ports):
    import httpx2  # noqa: F401 - imported once here, so the timing is the probes' own

    with HubServer(tmp_path / "a") as good, HubServer(tmp_path / "b") as also_good:
        folder = tmp_path / "repo"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        good.add_repo("org/m", folder)
        also_good.add_repo("org/m", folder)
        candidates = [
            *(parse_source(f"http://127.0.0.1:{port}") for port in silent_ports),
            parse_source(f"http://127.0.0.1:{_closed_port()}"),
            parse_source(good.url),
            parse_source(also_good.url),
        ]
        started = time.monotonic()
        choice = choose_source(candidates, {"hf": "org/m"}, timeout=3.0)
        elapsed = time.monotonic() - started
        assert choice.source.endpoint == good.url  # both answer at once: the preferred one
        # The hung sources are not waited for (before: their whole 3 s timeout).
        assert elapsed < 2.5
        assert "no answer yet" in choice.reason and "unreachable" in choice.reason
        assert [s.endpoint for s in choice.fallbacks()] == [also_good.url]
        assert time.monotonic() - started >= 3.0  # fallbacks() waited for the hung probes


def test_a_hanging_first_source_is_not_waited_for(tmp_path, silent_ports):
    """Issue 14, item 6: the first source in the order hangs, a later one answers at once;
    `provision env` (auto) took the later one only after the whole probe timeout."""
    with HubServer(tmp_path / "fast") as fast:
        folder = tmp_path / "repo"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        fast.add_repo("org/m", folder)
        hung = f"http://127.0.0.1:{silent_ports[0]}"
        started = time.monotonic()
        choice = choose_source([parse_source(hung), parse_source(fast.url)], {"hf": "org/m"},
                               timeout=6.0)  # fmt: skip
        assert time.monotonic() - started < 3.0  # well under the 6 s hang (2 CPUs, busy)
        assert choice.source.endpoint == fast.url

        # The command, end to end: a real process, the order from PROVISION_SOURCES.
        env = {"PROVISION_SOURCES": f"{hung},{fast.url}", "PROVISION_PROBE_TIMEOUT": "12",
               "PROVISION_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
        started = time.monotonic()
        rc, out = run_json("env", env=env, timeout=60)
        took = time.monotonic() - started
        assert rc == 0, out
        assert out["env"]["HF_ENDPOINT"] == fast.url and "no answer yet" in out["reason"]
        assert took < 8.0, took  # start-up included; the hang alone is 12 s


def test_probe_tells_apart_missing_repo_and_non_hub(tmp_path):
    with HubServer(tmp_path / "a") as hub:
        result = probe(parse_source(hub.url), "org/none", timeout=2)
        assert not result.ok and "has no repository org/none" in result.detail
        ms = probe(parse_source(f"modelscope:{hub.url}"), "org/none", timeout=2)
        assert not ms.ok and "has no repository" in ms.detail
        hub.fault("/api/*", fail_first=1, status=503)
        down = probe(parse_source(hub.url), "org/none", timeout=2)
        assert not down.ok and "503" in down.detail


def test_no_source_answering_is_one_message(tmp_path, silent_ports):
    candidates = [parse_source(f"http://127.0.0.1:{silent_ports[0]}")]
    with pytest.raises(ProvisionError, match="No source answered") as info:
        choose_source(candidates, {"hf": "org/m"}, timeout=0.5)
    assert "network_turbo" in info.value.hint
