"""The end of the line: weights `provision download` placed are what transformers loads offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli_helpers import run_json
from tests.hub import helpers
from tests.tinymodels import MODEL_CLASSES, child_env

LOAD = """
import json, sys, torch, transformers
repo, cls_name, with_processor = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
model = getattr(transformers, cls_name).from_pretrained(repo)
tok = transformers.AutoTokenizer.from_pretrained(repo)
ids = tok("hello there", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(input_ids=ids).logits
out = {"class": type(model).__name__, "logits": list(logits.shape), "tokens": ids.shape[1]}
if with_processor:
    out["processor"] = type(transformers.AutoProcessor.from_pretrained(repo)).__name__
print(json.dumps(out))
"""


def _load_offline(repo_id: str, kind: str, with_processor: bool, hf_home: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, repo_id, MODEL_CLASSES[kind], "1" if with_processor else "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tiny_vlms_downloaded_by_provision_load_offline_with_transformers(
    hub, hub_env, tmp_path, tiny_llava, tiny_qwen2_vl
):
    models = [("tiny-org/tiny-llava", "llava", tiny_llava, True)]
    # Qwen2-VL's processor needs torchvision under transformers 5 (see tests/tinymodels.py):
    # its model and tokenizer are what this machine can load.
    models.append(("tiny-org/tiny-qwen2-vl", "qwen2_vl", tiny_qwen2_vl, False))
    for repo_id, kind, folder, _ in models:
        hub.add_repo(repo_id, folder)
        helpers.write_profile(tmp_path / "profiles", kind.replace("_", "-"), repo_id)
        rc, out = run_json("download", kind.replace("_", "-"), "--source", hub.url)
        assert rc == 0, out
        assert out["bytes_fetched"] == helpers.tree_bytes(folder)
    hub.stop()  # from here on there is no hub at all
    for repo_id, kind, _folder, with_processor in models:
        loaded = _load_offline(repo_id, kind, with_processor, tmp_path / "hf")
        assert loaded["class"] == MODEL_CLASSES[kind]
        assert loaded["logits"][:2] == [1, loaded["tokens"]] and loaded["logits"][2] > 0
        if with_processor:
            assert loaded["processor"] == "LlavaProcessor"
