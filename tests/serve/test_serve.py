"""`provision serve` end to end on this GPU-less machine: the tiny LLaVA that `provision setup`
made (real uv env, real hub download, the lock's commit) served by the transformers stack, one
real OpenAI-compatible chat request with an image, and nothing left running after a stop."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from provision.smoke.dataset import exact_match
from provision.smoke.run import IMAGE
from tests.cli_helpers import run_cli, run_json
from tests.json_contract import check_envelope
from tests.serve.conftest import PROFILE, REPO

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict, timeout: float = 300) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is `pgid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def start_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "provision", "--json", "serve", PROFILE, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a stop aimed at provision alone, as a CI cancel or kill sends
    )


def read_ready(proc: subprocess.Popen[str], timeout: float = 600) -> dict:
    """The JSON `serve --json` prints once the health check answered."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"serve ended (rc={proc.wait()}): {proc.stderr.read()}")
        lines.append(line)
        try:
            return check_envelope(json.loads("".join(lines)))["result"]
        except json.JSONDecodeError:
            continue
    raise AssertionError("serve did not say it was ready")


def test_serve_answers_a_chat_request_with_an_image_then_stops_clean(served_world):
    port = free_port()
    proc = start_serve("--stack", "transformers", "--port", str(port))
    try:
        ready = read_ready(proc)
        base = ready["base_url"]
        assert base == f"http://127.0.0.1:{port}/v1"
        assert ready["verified"] is True and ready["commit"] == served_world["commit"]
        assert f"/snapshots/{served_world['commit']}" in ready["model_path"]
        assert ready["env"]["HF_HUB_OFFLINE"] == "1"
        assert ready["fit"] == "on the CPU"
        assert "curl" in ready["curl"] and f":{port}/v1/chat/completions" in ready["curl"]
        # The server: the provisioned env's python, our server script, the lock's snapshot,
        # offline, in a process group of its own.
        (server,) = children(proc.pid)
        argv = Path(f"/proc/{server}/cmdline").read_bytes().split(b"\0")
        env_python = served_world["root"] / "data" / "envs" / PROFILE / "bin" / "python"
        assert argv[0].decode() == str(env_python)
        assert argv[1].decode().endswith("provision/serve/server.py")
        assert ready["model_path"].encode() in argv
        environ = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
        assert b"HF_HUB_OFFLINE=1" in environ
        assert os.getpgid(server) == server

        assert get(f"{base}/models")["data"][0]["id"] == REPO
        image = base64.b64encode(IMAGE.read_bytes()).decode()
        answer = post(
            f"{base}/chat/completions",
            {
                "model": REPO,
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": f"data:image/jpeg;base64,{image}"},
                            },
                            {"type": "text", "text": "What is in this picture?"},
                        ],
                    }
                ],
            },
        )
        choice = answer["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str)
        assert 1 <= answer["usage"]["completion_tokens"] <= 5
        # The image went into the prompt: the same question without it is shorter by the
        # image's placeholder tokens.
        question = [{"type": "text", "text": "What is in this picture?"}]
        text_only = post(
            f"{base}/chat/completions",
            {"model": REPO, "max_tokens": 2, "messages": [{"role": "user", "content": question}]},
        )
        config = json.loads((Path(ready["model_path"]) / "config.json").read_text())
        vision = config["vision_config"]
        image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2  # 4 in the tiny LLaVA
        assert (
            answer["usage"]["prompt_tokens"] >= text_only["usage"]["prompt_tokens"] + image_tokens
        )
        # A bad request is the client's error, and the server keeps serving.
        with pytest.raises(urllib.error.HTTPError) as bad:
            post(
                f"{base}/chat/completions",
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
                            ],
                        }
                    ]
                },
            )
        assert bad.value.code == 400 and b"data: URI" in bad.value.read()
        # The fit's max model length holds: a prompt plus max_tokens over it is refused.
        limit = int(argv[argv.index(b"--max-model-len") + 1])
        with pytest.raises(urllib.error.HTTPError) as long:
            post(
                f"{base}/chat/completions",
                {"max_tokens": limit, "messages": [{"role": "user", "content": "Hi"}]},
            )
        assert long.value.code == 400 and b"max model length" in long.value.read()
        assert get(f"{base.removesuffix('/v1')}/health")["status"] == "ok"
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # provision alone: it must stop the server's group
        rc = proc.wait(timeout=60)
    assert rc == 128 + signal.SIGTERM
    assert group_members(server) == []
    assert not Path(f"/proc/{server}").exists() or group_members(server) == []
    with socket.socket() as sock:  # the port is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_ctrl_c_stops_the_server_too_and_a_proxy_does_not_take_the_health_check(served_world):
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"  # a proxy that is not there (AutoDL sets one)
    proxies = {"http_proxy": dead, "HTTP_PROXY": dead, "no_proxy": "", "NO_PROXY": ""}
    proc = start_serve("--stack", "transformers", "--port", str(port), env=proxies)
    ready = read_ready(proc)
    (server,) = children(proc.pid)
    assert get(ready["health_url"])["status"] == "ok"
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert group_members(server) == []


def test_a_port_in_use_is_one_message_and_starts_nothing(served_world):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = set(os.listdir("/proc"))
        proc = run_cli("serve", PROFILE, "--stack", "transformers", "--port", str(port))
    assert proc.returncode == 2, proc.stderr
    assert f"Port {port} on 127.0.0.1 is in use" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr
    started = {
        p
        for p in set(os.listdir("/proc")) - before
        if p.isdigit() and b"server.py" in Path(f"/proc/{p}/cmdline").read_bytes()
    }
    assert not started


def test_a_server_that_dies_while_loading_is_one_message_with_its_log(served_world, tmp_path):
    """An environment without torch: the server binds, then its loader fails."""
    from provision.uv import uv_bin

    bare = tmp_path / "bare"
    subprocess.run([uv_bin(), "venv", "--quiet", "--python", sys.executable, str(bare)], check=True)
    port = free_port()
    proc = run_cli(
        "serve", PROFILE, "--stack", "transformers", "--port", str(port), "--env", str(bare)
    )
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "exited with code 3 while loading" in err
    assert "No module named 'torch'" in err  # the server's own last log lines
    assert "Traceback" in err.split("log lines", 1)[1]  # it is the server's, not provision's
    assert err.count("provision/cli") == 0


def test_served_gives_other_stages_a_base_url_and_stops_the_group(served_world, tmp_path):
    """provision.serve.served: what a dataset smoke "served" uses."""
    from provision.serve import served

    with served(PROFILE, stack="transformers", log_path=tmp_path / "s.log") as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        answer = post(
            f"{server.base_url}/chat/completions",
            {"max_tokens": 3, "messages": [{"role": "user", "content": "Say hi"}]},
        )
        assert answer["model"] == REPO and answer["usage"]["completion_tokens"] >= 1
        pid = server.proc.pid
        assert group_members(pid)
    assert group_members(pid) == []
    assert "loaded" in (tmp_path / "s.log").read_text()


def test_weights_that_are_not_the_lock_s_are_refused_before_anything_starts(served_world):
    snapshot = next((served_world["root"] / "data" / "huggingface" / "hub").glob("models--*"))
    weights = next(snapshot.glob(f"snapshots/{served_world['commit']}/*.safetensors"))
    size = weights.stat().st_size
    with open(weights, "ab") as handle:  # one byte more: size and sha256 differ from the lock
        handle.write(b"\0")
    try:
        proc = run_cli("serve", PROFILE, "--stack", "transformers", "--port", str(free_port()))
    finally:
        os.truncate(weights, size)
    assert proc.returncode == 2, proc.stderr
    assert f"{weights.name} (size)" in proc.stderr and "provision download" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_server_that_dies_after_it_was_ready_ends_serve_with_its_log(served_world):
    proc = start_serve("--stack", "transformers", "--port", str(free_port()))
    read_ready(proc)
    (server,) = children(proc.pid)
    os.kill(server, signal.SIGKILL)  # as the kernel's OOM killer would
    assert proc.wait(timeout=60) == 1
    said = proc.stdout.read() + proc.stderr.read()  # --json: the error is JSON on stdout
    assert "exited with code -9" in said
    assert "loaded LlavaForConditionalGeneration" in said  # the server's own last log lines
    assert group_members(server) == []


def live_processes_naming(text: str) -> list[int]:
    """Live (not zombie) processes whose command line mentions `text`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def test_end_to_end_setup_serve_chat_then_the_dataset_smoke_served_and_nothing_left(
    served_world,
):
    """Issue 16's Must show, in one run: `provision setup` (the fixture, with the tiny VQA
    dataset downloaded into the lock from the local hub), `provision serve` on the CPU answers
    an OpenAI chat request with an image, `provision smoke --dataset --served` reports the
    exact-match accuracy of the served answers (the same answers the in-process smoke gives),
    and after each stop no process of the environment is left."""
    from provision.lock.lockfile import recorded_table
    from tests.hub.helpers import TINY_VQA
    from tests.serve.conftest import DATASET

    lock = served_world["lock"]
    env_python = served_world["root"] / "data" / "envs" / PROFILE / "bin" / "python"
    # serve, one chat request with an image, stop
    proc = start_serve("--stack", "transformers", "--port", str(free_port()))
    try:
        base = read_ready(proc)["base_url"]
        (server,) = children(proc.pid)
        image = base64.b64encode(IMAGE.read_bytes()).decode()
        content = [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}},
            {"type": "text", "text": "What is in this picture?"},
        ]
        answer = post(
            f"{base}/chat/completions",
            {"model": REPO, "max_tokens": 4, "messages": [{"role": "user", "content": content}]},
        )
        assert isinstance(answer["choices"][0]["message"]["content"], str)
        assert answer["usage"]["completion_tokens"] >= 1
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert group_members(server) == []
    assert live_processes_naming(str(env_python)) == []

    # the dataset smoke through the served model, then in-process for comparison
    def smoke(*extra: str) -> dict:  # recorded for the profile's lock, as after setup
        rc, out = run_json(
            "smoke", PROFILE, "--dataset", DATASET, "--n", "3", *extra, timeout=900
        )  # fmt: skip
        assert rc == 0, out
        return out  # the envelope's result

    served = smoke("--served")
    assert live_processes_naming(str(env_python)) == []  # the smoke's server is gone too
    assert served["via"] == "served" and served["backend"] == "transformers"
    assert served["dataset"] == DATASET and served["items_run"] == served["scored"] == 3
    assert [i["question"] for i in served["items"]] == [i["question"] for i in TINY_VQA[:3]]
    for item in served["items"]:
        assert isinstance(item["prediction"], str) and item["prediction"]
        assert item["match"] == exact_match(item["prediction"], item["answers"])
    correct = sum(i["match"] for i in served["items"])
    assert served["correct"] == correct and served["accuracy"] == round(correct / 3, 4)
    recorded = recorded_table(lock)["dataset_smoke"][DATASET]
    assert recorded["via"] == "served" and recorded["correct"] == correct
    assert [a["prediction"] for a in recorded["answers"]] == [
        i["prediction"] for i in served["items"]
    ]
    # Greedy decoding of the same pixels (a lossless PNG data: URI) through the same loader:
    # the served answers are the in-process ones, so the two ways score alike.
    local = smoke()
    assert local["via"] == "in-process"
    assert [i["prediction"] for i in local["items"]] == [i["prediction"] for i in served["items"]]
    assert recorded_table(lock)["dataset_smoke"][DATASET]["via"] == "in-process"
