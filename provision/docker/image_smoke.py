"""The image's entry point: run the profile's smoke inference and print its report.

Run by the image's environment (CMD ["python", "/opt/provision/provision/docker/image_smoke.py"]),
stand-alone: the standard library here, and provision's smoke runner (provision/smoke/runner.py,
which imports nothing of provision either) run as a child of the same interpreter. What to ask
comes from /opt/provision/image.json, written when the image was built: the model's repo id and
commit, the profile's question, its token budget.

The weights are read from the Hugging Face cache with HF_HUB_OFFLINE=1: the baked one
(HF_HUB_CACHE=/opt/weights/hub) or the volume at HF_HOME=/data/hf, where the user mounts theirs.
Prints the runner's JSON report on stdout; exit 0 when the smoke passed, 1 when it failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # /opt/provision
RUNNER = HERE.parent / "smoke" / "runner.py"
IMAGE = HERE.parent / "smoke" / "assets" / "cat.jpg"


def request_for(meta: dict) -> dict:
    smoke = meta.get("smoke") or {}
    return {
        "repo_id": meta["repo_id"],
        "revision": meta.get("revision"),
        "prompt": smoke.get("prompt") or "What is shown in this image? Answer in one sentence.",
        "max_new_tokens": smoke.get("max_new_tokens", 32),
        "model_class": smoke.get("model_class"),
        "trust_remote_code": bool(meta.get("trust_remote_code")),
        "image": str(IMAGE),
        "backend": meta.get("backend") or "transformers",
        "device": os.environ.get("PROVISION_SMOKE_DEVICE", "auto"),
        "modes": ["greedy", "group_beam"],
    }


def main(argv: list[str]) -> int:
    meta_file = Path(argv[0]) if argv else ROOT / "image.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="provision-smoke-") as tmp:
        request_file, out_file = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request_file.write_text(json.dumps(request_for(meta)), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, str(RUNNER), "--request", str(request_file), "--out", str(out_file)],
            env=env,
            cwd=tmp,
            check=False,
        )
        if not out_file.exists():
            print(json.dumps({"ok": False, "error": f"the smoke runner exited {proc.returncode}"}))
            return 1
        report = json.loads(out_file.read_text(encoding="utf-8"))
    report["profile"] = meta.get("profile")
    report["weights"] = meta.get("weights")
    print(json.dumps(report))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
