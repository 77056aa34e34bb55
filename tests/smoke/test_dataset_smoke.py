"""`provision smoke PROFILE --dataset NAME --n N`: dataset items through a tiny model in-process,
scored by normalised exact match, recorded in the lock.

The tiny random model answers nonsense, so the first run checks the report's shape and that the
accuracy is what its own items say; a second dataset, built from the same questions and images
with the model's own answers as references (changed in case and punctuation), must score 100%.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from provision.lock.lockfile import read_lock, tool_table
from provision.smoke.dataset import exact_match, normalise
from tests.cli_helpers import invoke, result_of, run_cli
from tests.hub import helpers
from tests.servers.hub import HubServer
from tests.smoke.helpers import write_smoke_profile
from tests.tinymodels import build_tiny_vlm

REPO = "tiny-org/llava-data"
PROFILE = "tiny-llava-data"


@pytest.fixture(scope="module")
def hub_world(tmp_path_factory: pytest.TempPathFactory):
    """A tiny VQA dataset on a local hub, downloaded into a lock, and a profile naming a model
    repo (not published here: `world` adds it)."""
    root = tmp_path_factory.mktemp("dataset-smoke")
    dataset = helpers.make_vqa_dataset(root / "datasets" / "tiny-vqa")
    with HubServer(root / "hub") as hub:
        hub.add_repo("org/tiny-vqa", dataset, repo_type="dataset")
        write_smoke_profile(root / "profiles", PROFILE, REPO)
        env = {
            **helpers.hub_env(hub.url, root),
            "HF_HOME": str(root / "hf"),
            "PROVISION_PROFILES_DIR": str(root / "profiles"),
            "PROVISION_DATA_DIR": str(root / "data"),
        }
        env.pop("HF_TOKEN")
        lock = root / "locks" / f"pylock.{PROFILE}.toml"
        proc = invoke("download", "--dataset", "org/tiny-vqa", "--lock", str(lock), env=env)
        assert proc.returncode == 0, proc.stderr
        yield root, hub, env, lock


@pytest.fixture(scope="module")
def world(hub_world):
    """`hub_world` plus a tiny LLaVA (this interpreter's transformers) published and downloaded
    into the lock: the tests using it build a model and run it, so they are `slow`."""
    root, hub, env, lock = hub_world
    model = build_tiny_vlm(root / "built" / "llava", "llava", sys.executable)
    hub.add_repo(REPO, model)
    proc = invoke("download", PROFILE, "--lock", str(lock), env=env)
    assert proc.returncode == 0, proc.stderr
    return hub_world


def _smoke(env: dict[str, str], lock: Path, dataset: str, n: int) -> tuple[int, dict, str]:
    proc = run_cli(
        "--json", "smoke", PROFILE, "--python", sys.executable, "--lock", str(lock),
        "--dataset", dataset, "--n", str(n), env=env, timeout=600,
    )  # fmt: skip
    return proc.returncode, result_of(proc), proc.stderr  # the envelope's, contract checked


def test_normalised_exact_match_against_any_reference() -> None:
    assert normalise("  The  CAT, sat!  ") == "the cat sat"
    assert normalise("红色。") == "红色"
    assert exact_match("Red.", ["crimson", "red"])
    assert exact_match(" two ", ["2", "Two"])
    assert not exact_match("red wine", ["red"])
    assert not exact_match("", ["", "yes"])  # an empty answer is never right
    assert not exact_match(None, ["yes"])


@pytest.mark.slow  # builds and runs a tiny model (world)
def test_dataset_smoke_reports_answers_and_the_accuracy_they_give(world) -> None:
    root, _hub, env, lock = world
    rc, out, err = _smoke(env, lock, "org/tiny-vqa", 3)
    assert rc == 0, (json.dumps({k: v for k, v in out.items() if k != "versions"}), err)
    assert out["dataset"] == "org/tiny-vqa" and out["n"] == 3 and out["items_run"] == 3
    assert out["files"] == ["data/val.jsonl"]
    questions = [item["question"] for item in helpers.TINY_VQA[:3]]
    assert [i["question"] for i in out["items"]] == questions
    assert [i["answers"] for i in out["items"]] == [i["answers"] for i in helpers.TINY_VQA[:3]]
    for item in out["items"]:
        assert isinstance(item["prediction"], str) and "error" not in item
        assert item["match"] == exact_match(item["prediction"], item["answers"])
    correct = sum(i["match"] for i in out["items"])
    assert out["correct"] == correct and out["scored"] == 3
    assert out["accuracy"] == round(correct / 3, 4)
    assert out["backend"] == "transformers"

    recorded = tool_table(read_lock(lock))["dataset_smoke"]["org/tiny-vqa"]
    assert recorded["correct"] == correct and recorded["n"] == 3
    assert [a["prediction"] for a in recorded["answers"]] == [i["prediction"] for i in out["items"]]
    assert recorded["commit"] == tool_table(read_lock(lock))["datasets"]["org/tiny-vqa"]["commit"]
    assert str(root) not in lock.read_text()  # portable: no local paths in the lock

    # The same questions and images, with the model's own answers as the references (shouted,
    # with punctuation): every item must match.
    echoed = [
        {**item, "answers": ["nope", f"  {i['prediction'].upper()} !"]}
        for item, i in zip(helpers.TINY_VQA[:3], out["items"], strict=True)
    ]
    folder = helpers.make_vqa_dataset(root / "datasets" / "echo", items=echoed)
    world[1].add_repo("org/echo-vqa", folder, repo_type="dataset")
    proc = run_cli("download", "--dataset", "org/echo-vqa", "--lock", str(lock), env=env)
    assert proc.returncode == 0, proc.stderr
    rc, again, err = _smoke(env, lock, "org/echo-vqa", 3)
    assert rc == 0, (again, err)
    assert [i["prediction"] for i in again["items"]] == [i["prediction"] for i in out["items"]]
    assert again["correct"] == 3 and again["accuracy"] == 1.0


@pytest.mark.slow  # builds and runs a tiny model (world)
def test_the_human_report_shows_each_question_and_the_score(world) -> None:
    _root, _hub, env, lock = world
    proc = run_cli(
        "smoke", PROFILE, "--python", sys.executable, "--lock", str(lock),
        "--dataset", "org/tiny-vqa", "--n", "2", env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "exact match" in proc.stdout and "What animal is this?" in proc.stdout
    assert "What colour is it?" in proc.stdout and "How many?" not in proc.stdout


def test_a_dataset_not_downloaded_or_not_readable_is_one_message(hub_world) -> None:
    # Both are refused before any model is loaded: no model is published in hub_world.
    _root, _hub, env, lock = hub_world
    proc = invoke(
        "smoke", PROFILE, "--python", sys.executable, "--lock", str(lock),
        "--dataset", "org/never-fetched", env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "provision download --dataset org/never-fetched" in proc.stderr
    proc = invoke(
        "smoke", PROFILE, "--python", sys.executable, "--lock", str(lock),
        "--dataset", "org/tiny-vqa", "--n", "0", env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "at least one item" in proc.stderr


def test_an_image_path_in_a_record_cannot_leave_the_dataset(tmp_path: Path) -> None:
    from PIL import Image

    from provision.smoke.runner import row_image

    base = tmp_path / "snapshot"
    (base / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(base / "images" / "a.png")
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "outside.png")
    data_file = str(base / "data" / "val.jsonl")
    assert row_image("images/a.png", data_file, str(base)).getpixel((0, 0)) == (1, 2, 3)
    png = (base / "images" / "a.png").read_bytes()
    assert row_image({"bytes": png, "path": None}, data_file, str(base)).size == (4, 4)
    for hostile in ("../outside.png", str(tmp_path / "outside.png"), "images/../../outside.png"):
        with pytest.raises(FileNotFoundError):
            row_image(hostile, data_file, str(base))
    with pytest.raises(ValueError):
        row_image(None, data_file, str(base))


def test_a_json_line_that_is_not_a_record_is_the_dataset_s_error(tmp_path: Path) -> None:
    # Each item is read by column name: a line holding a list or a number is named as the
    # dataset's fault (the smoke's "dataset" stage), not an AttributeError that kills the runner.
    from provision.smoke.runner import read_rows

    data = tmp_path / "val.jsonl"
    data.write_text('{"question": "q?", "answers": ["a"]}\n\n["q?", "a"]\n', encoding="utf-8")
    spec = {"files": [str(data)]}
    assert read_rows(spec, 1) == [(str(data), {"question": "q?", "answers": ["a"]})]
    with pytest.raises(ValueError, match="val.jsonl line 3 is a JSON list, not a record"):
        read_rows(spec, 2)


PARQUET_WRITER = r"""
import io, sys
import pyarrow as pa, pyarrow.parquet as pq
from PIL import Image

def png(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (6, 6), colour).save(buffer, format="PNG")
    return buffer.getvalue()

# lmms-lab/OK-VQA's columns (its card's dataset_info): the image as datasets' Image struct.
image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
table = pa.table({
    "question_id": pa.array(["10", "11", "12"]),
    "image": pa.array([{"bytes": png((255, 0, 0)), "path": None},
                       {"bytes": png((0, 255, 0)), "path": "x.png"},
                       {"bytes": None, "path": "images/local.png"}], type=image),
    "question": pa.array(["What colour?", "And this?", "Local file?"]),
    "answers": pa.array([["red"] * 10, ["green", "lime"], ["yes"]], type=pa.list_(pa.string())),
})
pq.write_table(table, sys.argv[1], row_group_size=2)
"""

PARQUET_READER = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
import runner
spec = {"files": [sys.argv[1]], "format": "parquet", "n": int(sys.argv[4])}
rows = runner.read_rows(spec, spec["n"])
out = []
for data_file, row in rows:
    img = runner.row_image(row["image"], data_file, sys.argv[2])
    out.append({"id": row["question_id"], "question": row["question"],
                "answers": runner.answer_list(row["answers"]), "pixel": list(img.getpixel((0, 0)))})
print(json.dumps(out))
"""


def test_parquet_rows_as_ok_vqa_stores_them_are_read_by_the_runner(tmp_path: Path) -> None:
    """The parquet path needs pyarrow, which the test venv lacks (provision does not depend on
    it): a throwaway uv env with pyarrow and pillow writes OK-VQA-shaped parquet and runs the
    runner's own reader on it, as the provisioned env (with `datasets`) would."""
    import subprocess

    from PIL import Image

    from provision.smoke.run import RUNNER
    from provision.uv import uv_bin

    env = tmp_path / "pa-env"
    uv = uv_bin()
    subprocess.run([uv, "venv", "--quiet", "--no-project", "--python", sys.executable, str(env)],
                   check=True)  # fmt: skip
    python = env / "bin" / "python"
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), "pyarrow", "pillow"],
                   check=True)  # fmt: skip
    base = tmp_path / "snapshot"
    (base / "images").mkdir(parents=True)
    (base / "data").mkdir()
    Image.new("RGB", (6, 6), (0, 0, 255)).save(base / "images" / "local.png")
    data = base / "data" / "val2014-00000-of-00001.parquet"
    subprocess.run([str(python), "-c", PARQUET_WRITER, str(data)], check=True)
    read = subprocess.run(
        [str(python), "-c", PARQUET_READER, str(data), str(base), str(RUNNER.parent), "3"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    rows = json.loads(read.stdout)
    assert [r["id"] for r in rows] == ["10", "11", "12"]  # across the two row groups
    assert rows[0]["answers"] == ["red"] * 10 and rows[1]["answers"] == ["green", "lime"]
    assert [r["pixel"] for r in rows] == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    two = subprocess.run(
        [str(python), "-c", PARQUET_READER, str(data), str(base), str(RUNNER.parent), "2"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert [r["id"] for r in json.loads(two.stdout)] == ["10", "11"]  # --n stops the reading


def test_served_items_take_only_a_chat_completion_s_text_from_the_server(tmp_path: Path) -> None:
    """The served way's runner against a local HTTP server: each item is one chat request with
    the image as a PNG data: URI; a reply that is not a chat completion with text, or an HTTP
    error, is that item's error (with the server's reason), never a prediction."""
    import base64
    import io
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from PIL import Image

    from provision.smoke import runner

    folder = helpers.make_vqa_dataset(tmp_path / "vqa")
    replies = [
        (200, {"choices": [{"message": {"role": "assistant", "content": "Cat"}}]}),
        (200, {"choices": [{"message": {"content": 5}}]}),
        (200, {"choices": []}),
        (400, {"error": {"message": "too long for max model length"}}),
    ]
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            code, body = replies[len(seen) - 1]
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        report = runner.run_served_dataset(
            {
                "max_new_tokens": 7,
                "dataset": {
                    "files": [str(folder / "data" / "val.jsonl")],
                    "question": "question",
                    "answers": "answers",
                    "image": "image",
                    "base": str(folder),
                    "n": 4,
                },
                "served": {
                    "base_url": f"http://127.0.0.1:{server.server_port}/v1",
                    "model": "tiny-org/m",
                    "stack": "transformers",
                },
            }
        )
    finally:
        server.shutdown()
    items = report["items"]
    assert [i.get("prediction") for i in items] == ["Cat", None, None, None]
    assert "not text" in items[1]["error"]["message"]
    assert "not a chat completion" in items[2]["error"]["message"]
    refused = items[3]["error"]["message"]
    assert "400" in refused and "max model length" in refused
    assert report["ok"] is False and report["backend"] == "transformers"
    first = seen[0]
    assert first["model"] == "tiny-org/m" and first["max_tokens"] == 7
    image_part, text_part = first["messages"][0]["content"]
    assert text_part == {"type": "text", "text": helpers.TINY_VQA[0]["question"]}
    head, payload = image_part["image_url"]["url"].split(",", 1)
    assert head == "data:image/png;base64"
    sent = Image.open(io.BytesIO(base64.b64decode(payload)))
    on_disk = Image.open(folder / "images" / "1.png").convert("RGB")
    assert sent.convert("RGB").tobytes() == on_disk.tobytes()  # the dataset's pixels, lossless


def test_served_needs_a_dataset(tmp_path: Path) -> None:
    proc = invoke("smoke", "any-profile", "--served", env={"PROVISION_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--served" in proc.stderr and "--dataset" in proc.stderr
