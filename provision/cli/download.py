"""`provision download PROFILE` and `provision verify PROFILE`: fetch the weights; check them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provision.cli.options import JsonFlag, ProfilesDir, SourceOpt
from provision.cli.output import emit, emit_result, use_json
from provision.errors import CheckFailed, ProvisionError

LockOpt = Annotated[
    Path | None,
    typer.Option("--lock", help="Lockfile to record into / read (default: the profile's)."),
]


DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="A hub dataset instead of weights: org/name[@revision] or modelscope:org/name "
        "(recorded in PROFILE's lock when one is named, else --lock, else "
        "pylock.datasets.toml).",
    ),
]


def download(
    profile: Annotated[
        str | None,
        typer.Argument(help="Profile name, e.g. qwen2-vl-2b (optional with --dataset)."),
    ] = None,
    dataset: DatasetOpt = None,
    source: SourceOpt = "auto",
    revision: Annotated[
        str | None, typer.Option(help="Branch, tag or commit (default: lock, then profile).")
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Only files matching this glob.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Leave out files matching this glob.")
    ] = None,
    lock: LockOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Hash every cached file in full before reusing it (else: if changed)."
        ),
    ] = False,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Download a profile's weights, or a dataset (--dataset), resumable and sha256-verified,
    and record them in the lock."""
    as_json = use_json(json_output)
    if dataset is not None:
        from provision.hub.datasets import default_lock, download_dataset, parse_dataset

        ref = parse_dataset(dataset)
        into_lock = lock is not None
        if lock is None:
            lock = default_lock(load_profile_name(profile, profiles_dir))
        result = download_dataset(
            ref,
            source=None if source == "auto" else source,
            revision=revision,
            include=include,
            exclude=exclude,
            lock_file=lock,
            progress=not as_json,
            into_lock=into_lock,
            rehash=force,
        )
    else:
        from provision.hub import download_profile
        from provision.profiles import load_profile

        if profile is None:
            raise ProvisionError(
                "Name what to download: a PROFILE (its weights) or --dataset ORG/NAME.",
                "e.g. provision download qwen2-vl-2b, or provision download --dataset "
                "lmms-lab/OK-VQA",
            )
        result = download_profile(
            load_profile(profile, profiles_dir),
            source=source,
            revision=revision,
            include=include,
            exclude=exclude,
            lock_file=lock,
            progress=not as_json,
            rehash=force,
        )

    def render(con: Any) -> None:
        from provision.units import fmt_bytes

        con.print(f"[bold]{result.repo_id}[/] @ {result.revision} ({result.commit or 'no commit'})")
        con.print(f"source: {result.reason}", markup=False)
        con.print(
            f"{len(result.files)} files, {fmt_bytes(result.total_bytes)}: "
            f"{fmt_bytes(result.bytes_fetched)} fetched, {fmt_bytes(result.bytes_reused)} "
            f"already here, in {result.seconds:.1f} s"
        )
        con.print(f"in {result.snapshot}", markup=False)
        if result.record_file and result.record_file != result.lock_file:
            con.print(
                f"recorded for {result.lock_file} in this machine's record {result.record_file} "
                "(the lock is kept as it is; --lock FILE records into FILE)",
                markup=False,
            )
        elif result.lock_file:
            con.print(f"recorded in {result.lock_file}", markup=False)
        for note in result.notes:
            con.print(note, markup=False)

    emit(result, render, as_json)


def load_profile_name(profile: str | None, profiles_dir: Path | None) -> str | None:
    """The profile's name (a repo id or path resolves to one), or None when none is given."""
    if profile is None:
        return None
    from provision.profiles import load_profile

    return load_profile(profile, profiles_dir).name


def verify(
    profile: Annotated[
        str | None,
        typer.Argument(help="Profile name, e.g. qwen2-vl-2b (optional with --dataset)."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", help="Check this recorded dataset (org/name) instead of the weights."
        ),
    ] = None,
    lock: LockOpt = None,
    profiles_dir: ProfilesDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Re-hash the downloaded weights (or a dataset) against the lockfile; exit 1 if any file
    is missing or wrong."""
    if dataset is not None:
        from provision.hub.datasets import default_lock, parse_dataset, verify_dataset

        if lock is None:
            lock = default_lock(load_profile_name(profile, profiles_dir))
        result = verify_dataset(parse_dataset(dataset).key, lock)
        again = f"provision download --dataset {dataset} --lock {lock}"
    elif profile is None:
        raise ProvisionError(
            "Name what to verify: a PROFILE (its weights) or --dataset ORG/NAME.",
            "e.g. provision verify qwen2-vl-2b, or provision verify --dataset lmms-lab/OK-VQA",
        )
    else:
        from provision.hub import verify_profile
        from provision.profiles import load_profile

        result = verify_profile(load_profile(profile, profiles_dir), lock)
        again = f"provision download {profile}"

    def render(con: Any) -> None:
        from rich.markup import escape

        from provision.units import fmt_bytes

        total = sum(c.size for c in result.checks)
        if result.ok:
            con.print(
                f"[green]ok[/]: {len(result.checks)} files, {fmt_bytes(total)} of "
                f"{escape(result.repo_id)} match {escape(str(result.lock_file))}"
            )
            if result.unverified:
                con.print(
                    f"[yellow]unverified[/]: {len(result.unverified)} of them match only what "
                    "was downloaded: the source gave no sha256 to check them against "
                    f"({escape(', '.join(c.path for c in result.unverified[:5]))})."
                )
            return
        con.print(
            f"[red]{len(result.problems)} of {len(result.checks)} files[/] of "
            f"{escape(result.repo_id)} do not match {escape(str(result.lock_file))}:"
        )
        for c in result.problems:
            what = {
                "missing": "missing",
                "size": f"size {c.actual_size}, expected {c.size}",
                "sha256": f"sha256 {c.actual_sha256}, expected {c.sha256}",
            }[c.status]
            con.print(f"  {escape(c.path)}: {what}")
        con.print(f"Fetch them again: {escape(again)}")

    failure = None
    if not result.ok:
        failure = CheckFailed(
            f"{len(result.problems)} of {len(result.checks)} files of {result.repo_id} do not "
            f"match {result.lock_file}.",
            f"Fetch them again: {again}",
        )
    emit_result(result, render, json_output, failure)


def register(app: typer.Typer) -> None:
    app.command("download")(download)
    app.command("verify")(verify)
