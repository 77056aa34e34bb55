"""`provision check`: this machine (or a planned one) against what a profile needs for a task."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from provision.errors import ProvisionError
from provision.fit import FitRequest, FitResult, check_fit
from provision.hardware.disks import DataDir, choose_data_dir
from provision.hardware.machine import Machine
from provision.profiles import Profile, load_profile


@dataclass
class DiskCheck:
    data_dir: DataDir | None
    need: int  # bytes the weights take on disk
    enough: bool
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": None if self.data_dir is None else self.data_dir.to_json(),
            "need_bytes": self.need,
            "enough": self.enough,
            "note": self.note,
        }


@dataclass
class CheckReport:
    profile: Profile
    machine: Machine
    fit: FitResult
    disk: DiskCheck
    cluster: Any = None  # provision.cluster.plan.ClusterPlan under `check --nodes`
    launch: Any = None  # provision.launch.Launch with --emit
    launch_note: str = ""  # which suggestion the launch line applies, when it does not fit as is

    @property
    def ok(self) -> bool:
        # A planned target is judged on its GPUs; this machine also needs room for the weights.
        return self.fit.fits and (self.machine.planned or self.disk.enough)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "model": self.profile.hf_repo,
            "profile_origin": self.profile.origin,
            "approximate": (self.profile.derived or {}).get("approximate", []),
            "machine": self.machine.to_json(),
            "fit": self.fit.to_json(),
            "disk": self.disk.to_json(),
            "ok": self.ok,
            **({"cluster": self.cluster.to_json()} if self.cluster is not None else {}),
            "launch": None
            if self.launch is None
            else self.launch.to_json() | {"applies": self.launch_note or None},
        }


def check_disk(profile: Profile) -> DiskCheck:
    need = profile.download_bytes
    try:
        data_dir = choose_data_dir()
    except Exception as exc:  # noqa: BLE001 - a disk we cannot read is reported, not fatal
        return DiskCheck(None, need, False, str(exc))
    # Weights plus a margin: a download keeps one partial file beside the finished ones.
    enough = data_dir.free >= need * 1.05
    note = f"{data_dir.path} ({data_dir.reason})"
    return DiskCheck(data_dir, need, enough, note)


def run_check(
    profile_name: str,
    request: FitRequest,
    machine: Machine | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    emit: bool = False,
    dataset: str | None = None,
    same_machine: bool = False,
) -> CheckReport:
    """Load the profile, probe this machine unless a planned one is given, and judge the fit.
    `same_machine`: the launch line may only change the request, not the GPU count (serve runs
    it here)."""
    profile = load_profile(profile_name, profiles_dir)
    if machine is None:
        from provision.hardware.probe import probe_machine

        machine = probe_machine()
    siblings = []
    for name in profile.siblings:
        try:  # a sibling that is missing or broken only loses its suggestion
            siblings.append(load_profile(name, profiles_dir))
        except ProvisionError:
            continue
    fit = check_fit(profile, request, machine, siblings)
    report = CheckReport(profile=profile, machine=machine, fit=fit, disk=check_disk(profile))
    if emit or dataset is not None:  # a dataset is only for the launch line: it implies --emit
        report.launch, report.launch_note = plan_launch(
            profile, request, fit, machine, dataset, same_machine
        )
    return report


def plan_launch(
    profile: Profile,
    request: FitRequest,
    fit: FitResult,
    machine: Machine,
    dataset: str | None = None,
    same_machine: bool = False,
) -> tuple[Any, str]:
    """The launch command for the request if it fits, else for the first suggestion that changes
    only the request or the GPU count (the numbers that make it fit); only the request with
    `same_machine`."""
    from dataclasses import fields, replace

    from provision.launch import launch_for
    from provision.memory import resolve_request

    gpus = max(machine.gpu_count, 1)
    if fit.fits:
        return launch_for(profile, fit.request, gpus, dataset), ""
    names = {f.name for f in fields(FitRequest)} | ({"gpus"} if not same_machine else set())
    for s in fit.suggestions:
        if s.change and set(s.change) <= names:
            change = {k: v for k, v in s.change.items() if k != "gpus"}
            req = resolve_request(profile, replace(request, **change))
            return launch_for(profile, req, s.change.get("gpus", gpus), dataset), s.text
    return launch_for(
        profile, fit.request, gpus, dataset
    ), "nothing listed makes it fit on this machine"
