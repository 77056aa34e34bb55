"""The dataset smoke: N items of a downloaded dataset through the model, scored by exact match.

    provision smoke PROFILE --dataset okvqa --n 20

The dataset must be downloaded and recorded first (`provision download --dataset`, or a
direction's setup): its files are read from the pinned snapshot, in the target environment, by
the same runner as the single-image smoke (runner.py: one model load, greedy decoding per item).
The scoring is here: an answer is right when, normalised (case, punctuation, whitespace), it
equals any of the item's reference answers (OK-VQA lists ten). It is a smoke, not a benchmark
harness: no answer extraction, no VQA soft score. The result goes into the lock's
`[tool.provision.dataset_smoke."<dataset>"]` (`[tool.provision.<member path>.dataset_smoke...]`
for one member of a direction).
"""

from __future__ import annotations

import fnmatch
import json
import re
import string
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError
from provision.profiles import Profile

DEFAULT_N = 20
DATA_SUFFIXES = (".parquet", ".jsonl")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}\u3000-\u303f\uff00-\uff65]")


def normalise(text: str) -> str:
    """Lower case, punctuation (ASCII and CJK) dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def exact_match(prediction: str | None, answers: Sequence[str]) -> bool:
    """The prediction equals any reference answer once both are normalised."""
    if prediction is None:
        return False
    said = normalise(prediction)
    return bool(said) and any(said == normalise(a) for a in answers)


@dataclass
class DatasetItem:
    index: int
    id: str
    question: str
    answers: list[str]
    prediction: str | None
    match: bool
    latency_s: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "id": self.id,
            "question": self.question,
            "answers": self.answers,
            "prediction": self.prediction,
            "match": self.match,
        }
        if self.latency_s is not None:
            out["latency_s"] = self.latency_s
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class DatasetSmokeResult:
    profile: str
    dataset: str  # the lock's key for it (the hub id)
    repo_id: str
    commit: str | None
    model_repo: str
    python: Path
    n: int  # asked for
    items: list[DatasetItem]
    backend: str | None
    device: str | None
    versions: dict[str, str]
    error: dict[str, Any] | None
    wall_seconds: float
    at: str
    lock_file: Path | None = None
    not_recorded: str | None = None
    log_tail: str = ""
    files: list[str] = field(default_factory=list)  # the data files read, in the repository
    via: str = "in-process"  # or "served": through `provision serve`'s OpenAI endpoint

    @property
    def scored(self) -> int:
        return sum(1 for i in self.items if i.error is None)

    @property
    def correct(self) -> int:
        return sum(1 for i in self.items if i.match)

    @property
    def accuracy(self) -> float | None:
        """Exact-match accuracy over the items that got an answer; None when none did."""
        return round(self.correct / self.scored, 4) if self.scored else None

    @property
    def ok(self) -> bool:
        """The model answered every item it was given (right or wrong: it is a smoke)."""
        return self.error is None and bool(self.items) and self.scored == len(self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "ok": self.ok,
            "dataset": self.dataset,
            "repo_id": self.repo_id,
            "commit": self.commit,
            "model": self.model_repo,
            "files": self.files,
            "n": self.n,
            "items_run": len(self.items),
            "scored": self.scored,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "metric": "exact match (case, punctuation, whitespace normalised; any reference)",
            "items": [i.to_json() for i in self.items],
            "backend": self.backend,
            "via": self.via,
            "device": self.device,
            "versions": self.versions,
            "error": self.error,
            "python": str(self.python),
            "wall_seconds": self.wall_seconds,
            "at": self.at,
            "lock_file": str(self.lock_file) if self.lock_file else None,
            "not_recorded": self.not_recorded,
        }

    def record(self) -> dict[str, Any]:
        """What the lock keeps: portable (no local paths), the answers and the score."""
        out: dict[str, Any] = {
            "ok": self.ok,
            "repo_id": self.repo_id,
            "model": self.model_repo,
            "n": self.n,
            "items_run": len(self.items),
            "scored": self.scored,
            "correct": self.correct,
            "metric": "exact_match",
            "via": self.via,
            "wall_seconds": self.wall_seconds,
            "at": self.at,
            "versions": self.versions,
            "answers": [
                {"id": i.id, "prediction": i.prediction or "", "match": i.match} for i in self.items
            ],
        }
        for key, value in (
            ("commit", self.commit),
            ("accuracy", self.accuracy),
            ("backend", self.backend),
            ("device", self.device),
        ):
            if value is not None:
                out[key] = value
        if self.error:
            out["error"] = f"{self.error.get('stage')}: {self.error.get('type')}"
        return out


# --- reading hints ------------------------------------------------------------------------------


def reading_spec(key: str, snapshot: Path) -> dict[str, Any]:
    """How the runner reads the dataset: its files (the catalogue's globs, else every parquet
    and JSON-lines file in the snapshot) and its question / answers / image columns."""
    from provision.hub.datasets import catalog_entry

    found = catalog_entry(key)
    entry = found[1] if found else {}
    if entry.get("smoke") is False:
        raise ProvisionError(
            f"Dataset {key} ({found[0] if found else key}) ships archives the smoke cannot read "
            f"as they are ({entry.get('source', '')}).",
            "Unpack it and run its own evaluation code; download and verify cover it as is.",
        )
    every = sorted(
        p.relative_to(snapshot).as_posix()
        for p in snapshot.rglob("*")
        if p.is_file() and p.name.endswith(DATA_SUFFIXES)
    )
    globs = entry.get("files")
    chosen = [p for p in every if any(fnmatch.fnmatch(p, g) for g in globs)] if globs else every
    if not chosen:
        raise ProvisionError(
            f"Dataset {key} has no data file the smoke reads in {snapshot} "
            f"(looked for {', '.join(globs) if globs else '*.parquet, *.jsonl'}).",
            "The smoke reads parquet and JSON-lines files with question/answers/image columns.",
        )
    return {
        "files": [str(snapshot / p) for p in chosen],
        "relative": chosen,
        "format": entry.get("format"),
        "question": entry.get("question", "question"),
        "answers": entry.get("answers", "answers"),
        "image": entry.get("image", "image"),
        "base": str(snapshot),
    }


def _locate_dataset(
    name: str, lock_file: Path | None, hub_cache: Path | None
) -> tuple[str, dict[str, Any], Path, Path]:
    """(key, record, snapshot, the lock that records it): the profile's lock first, then
    pylock.datasets.toml, where `provision download --dataset` records without a profile."""
    from provision.hub.datasets import (
        dataset_record,
        dataset_snapshot,
        default_lock,
        parse_dataset,
    )

    ref = parse_dataset(name)
    looked = []
    for lock in (lock_file, default_lock()):
        if lock is None or not Path(lock).exists():
            continue
        looked.append(str(lock))
        found = dataset_record(Path(lock), ref.key)
        if found is not None and found[1].get("files"):
            key, record = found
            snapshot = dataset_snapshot(record, hf_cache=hub_cache)
            if not snapshot.is_dir():
                raise ProvisionError(
                    f"{lock} records dataset {key}, but its files are not in {snapshot}.",
                    f"Fetch them again: provision download --dataset {name} --lock {lock}",
                )
            return key, record, snapshot, Path(lock)
    where = f" (looked in {', '.join(looked)})" if looked else ""
    raise ProvisionError(
        f"Dataset {ref.key} is not downloaded and recorded{where}.",
        f"Fetch it first: provision download --dataset {name}"
        + (f" --lock {lock_file}" if lock_file else ""),
    )


def run_dataset_smoke(
    profile: Profile,
    python: Path,
    dataset: str,
    n: int = DEFAULT_N,
    hf_home: Path | None = None,
    lock_file: Path | None = None,
    device: str = "auto",
    timeout: float = 1800.0,
    backend: str | None = None,
    max_new_tokens: int | None = None,
    record_under: Sequence[str] | None = None,
    hub_cache: Path | None = None,
    into_lock: bool = False,
    served: bool = False,
    profiles_dir: str | None = None,
) -> DatasetSmokeResult:
    """Run the first `n` items of `dataset` (a catalogue name or hub id, downloaded and
    recorded) through `profile`'s model in the environment of `python`, score them, and record
    the result for `lock_file` (the profile's lock) when given.

    `served`: the model is not loaded in-process but served by `provision serve` (`backend`
    names the stack, default the profile's) from the environment of `python`; the runner, in
    that environment, reads the items and sends each as an OpenAI chat request with the image
    as a data: URI. Scoring and recording are the same; the record says `via = "served"`."""
    from provision.smoke import run as single

    if n < 1:
        raise ProvisionError(f"--n {n}: the smoke needs at least one item.", "Use --n 20, say.")
    python = single._check_python(python)
    single._refuse_without_backend(profile)
    if record_under is None:
        from provision.lock.lockfile import member_path

        record_under = member_path(lock_file, profile.name) if lock_file is not None else ()
    cache = hub_cache or (Path(hf_home) / "hub" if hf_home else None)
    key, record, snapshot, _found_in = _locate_dataset(dataset, lock_file, cache)
    spec = reading_spec(key, snapshot)
    model, _location = single._locate(profile, lock_file, hf_home, record_under)
    smoke = profile.smoke
    request = {
        **model,
        "prompt": smoke["prompt"],
        "max_new_tokens": max_new_tokens or smoke.get("max_new_tokens", 16),
        "model_class": smoke.get("model_class"),
        "trust_remote_code": profile.trust_remote_code,
        "backend": backend or single._backend(profile),
        "device": device,
        "modes": ["greedy"],
        "dataset": {k: v for k, v in spec.items() if k != "relative"} | {"n": n},
    }
    started = time.perf_counter()
    if served:
        from provision.serve import served as serving

        stack = backend  # None: the profile's (provision.serve picks it as `serve` does)
        with serving(
            profile.name,
            stack=stack,
            env=_env_folder(python),
            lock=lock_file,
            timeout=timeout,
            profiles_dir=profiles_dir,
        ) as server:
            request["served"] = {
                "base_url": server.base_url,
                "model": server.plan.repo_id,
                "stack": server.plan.stack,
                "timeout": timeout,
            }
            report, log_tail = _run_runner(python, request, hf_home, hub_cache, timeout)
            if report.get("error") is None and not report.get("ok"):
                log_tail += "\n--- server log ---\n" + server.log_tail()
    else:
        report, log_tail = _run_runner(python, request, hf_home, hub_cache, timeout)
    items = [_item(raw, i) for i, raw in enumerate(report.get("items") or [])]
    result = DatasetSmokeResult(
        profile=profile.name,
        dataset=key,
        repo_id=record["repo_id"],
        commit=record.get("commit"),
        model_repo=model["repo_id"],
        python=python,
        n=n,
        items=items,
        backend=report.get("backend"),
        device=report.get("device"),
        versions=report.get("versions") or {},
        error=report.get("error"),
        wall_seconds=round(time.perf_counter() - started, 3),
        at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        log_tail=log_tail,
        files=spec["relative"],
        via="served" if served else "in-process",
    )
    if lock_file is not None:
        result.lock_file = Path(lock_file)
        result.not_recorded = single.not_the_locks_env(Path(lock_file), result.versions)
        if result.not_recorded is None:
            record_dataset_smoke(Path(lock_file), key, result.record(), record_under, into_lock)
    return result


def _env_folder(python: Path) -> Path | None:
    """The virtual environment `python` belongs to (what `provision serve --env` takes)."""
    folder = Path(python).parent.parent
    return folder if (folder / "pyvenv.cfg").is_file() else None


def _run_runner(
    python: Path,
    request: dict[str, Any],
    hf_home: Path | None,
    hub_cache: Path | None,
    timeout: float,
) -> tuple[dict[str, Any], str]:
    """The runner's report for `request` (run in the target environment) and its log's end."""
    from provision.smoke import run as single

    with tempfile.TemporaryDirectory(prefix="provision-smoke-") as tmp:
        request_file = Path(tmp) / "request.json"
        out_file = Path(tmp) / "result.json"
        log_file = Path(tmp) / "runner.log"
        request_file.write_text(json.dumps(request), encoding="utf-8")
        command = [
            str(python),
            str(single.RUNNER),
            "--request",
            str(request_file),
            "--out",
            str(out_file),
        ]
        with open(log_file, "wb") as log:
            code = single._run_group(
                command, log, single._child_env(hf_home, hub_cache), tmp, timeout
            )
        log_tail = log_file.read_bytes()[-4000:].decode("utf-8", "replace")
        report: dict[str, Any] | None = None
        if out_file.exists():
            report = json.loads(out_file.read_text(encoding="utf-8"))
    if not isinstance(report, dict):
        report = single._no_report(code, timeout, log_tail)
    return report, log_tail


def _item(raw: Any, index: int) -> DatasetItem:
    """One item of the runner's report, checked: it comes from another process's JSON."""
    if not isinstance(raw, dict):
        raw = {}
    answers = raw.get("answers")
    answers = [str(a) for a in answers] if isinstance(answers, list) else []
    prediction = raw.get("prediction")
    prediction = str(prediction) if prediction is not None else None
    error = raw.get("error")
    message = None
    if isinstance(error, dict):
        message = f"{error.get('type')}: " + str(error.get("message") or "").strip()[:300]
    latency = raw.get("latency_s")
    return DatasetItem(
        index=index,
        id=str(raw.get("id", index)),
        question=str(raw.get("question", "")),
        answers=answers,
        prediction=prediction,
        match=message is None and exact_match(prediction, answers),
        latency_s=latency if isinstance(latency, (int, float)) else None,
        error=message,
    )


def record_dataset_smoke(
    lock_file: Path,
    key: str,
    record: dict[str, Any],
    record_under: Sequence[str] = (),
    into_lock: bool = False,
) -> Path:
    """`[tool.provision(.<record_under...>).dataset_smoke."<key>"]` = the record, kept apart
    from the single-image smoke's table so neither overwrites the other."""
    from provision.lock.lockfile import record as record_into

    def change(data: dict[str, Any]) -> None:
        table = data.setdefault("tool", {}).setdefault("provision", {})
        for part in record_under:
            table = table.setdefault(part, {})
        smokes = table.get("dataset_smoke")
        if not isinstance(smokes, dict):
            smokes = table["dataset_smoke"] = {}
        smokes[key] = record

    return record_into(lock_file, change, into_lock=into_lock)
