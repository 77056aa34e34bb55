"""Inside an image build: download the lock's checkpoint into a Hugging Face cache and verify it.

Run by the environment's own Python in the `weights` stage (stand-alone: the standard library and
the environment's huggingface_hub, nothing from provision):

    python image_weights.py weights.json /opt/weights/hub

`weights.json` is the lock's model record: repo_id, commit, and every file's path, size and sha256.
Files come from HF_ENDPOINT (a build argument: the hub or a mirror) at exactly that commit, into
the standard cache layout so `from_pretrained(repo_id)` finds them offline; each is then hashed and
compared with the lock. A gated model's token is read from the build secret mounted at
/run/secrets/hf_token for this one step; it is never printed, written or put in the environment.

Prints one JSON line with the files checked; exit 1 on any mismatch or download failure.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

SECRET = Path("/run/secrets/hf_token")


def _token() -> str | None:
    try:
        token = SECRET.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: image_weights.py WEIGHTS_JSON CACHE_DIR", file=sys.stderr)
        return 2
    manifest = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    cache = Path(argv[1])
    from huggingface_hub import hf_hub_download

    token = _token()
    checked = []
    for entry in manifest["files"]:
        try:
            local = hf_hub_download(
                manifest["repo_id"],
                entry["path"],
                revision=manifest["commit"],
                cache_dir=str(cache),
                token=token,
            )
        except Exception as exc:  # the client's own message says what the hub answered
            message = str(exc)
            if token:
                message = message.replace(token, "***")
            print(json.dumps({"ok": False, "file": entry["path"], "error": message[-800:]}))
            return 1
        real = Path(local).resolve()
        size, digest = real.stat().st_size, _sha256(real)
        if size != entry["size"] or digest != entry["sha256"]:
            print(
                json.dumps(
                    {
                        "ok": False,
                        "file": entry["path"],
                        "error": f"got {size} bytes sha256 {digest}, the lock says "
                        f"{entry['size']} bytes sha256 {entry['sha256']}",
                    }
                )
            )
            return 1
        checked.append({"path": entry["path"], "size": size, "sha256": digest})
        print(f"provision weights: {entry['path']} ({size} bytes) verified", file=sys.stderr)
    # Name the commit by the revision the lock asked for (refs/main), as a download on the host
    # does, so `from_pretrained(repo_id)` resolves it offline without being told the commit.
    revision = manifest.get("revision") or "main"
    if revision != manifest["commit"]:
        repo_dir = cache / ("models--" + manifest["repo_id"].replace("/", "--"))
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / revision).write_text(manifest["commit"], encoding="utf-8")
    # Lock files the client leaves behind are of no use in an image.
    for lock in (cache / ".locks").glob("**/*.lock") if (cache / ".locks").is_dir() else ():
        lock.unlink()
    print(json.dumps({"ok": True, "repo_id": manifest["repo_id"], "commit": manifest["commit"],
                      "files": checked}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
