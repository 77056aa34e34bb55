"""torch variant choice (rules 1-5), pin rewriting, index routes, the matrix's own consistency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.hardware.driver import DriverFacts
from provision.hardware.machine import cuda_for_driver
from provision.torch_select import (
    PYPI_URL,
    choose_variant,
    matrix,
    plan_torch,
    release_for,
    torch_index,
)

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "torch_matrix.reference.json"


def facts(driver: str | None, *ccs: str, planned: bool = False, names=()) -> DriverFacts:
    parsed = [tuple(int(p) for p in cc.split(".")) for cc in ccs]
    return DriverFacts(
        driver_version=driver,
        cuda_version=cuda_for_driver(driver) if driver else None,
        compute_capabilities=parsed,  # type: ignore[arg-type]
        gpu_names=list(names) or [f"GPU cc {cc}" for cc in ccs],
        source="test",
        looked_at=["test"],
        planned=planned,
    )


# driver x torch x compute capability -> (variant, rule)
CASES = [
    # the README case: torch 2.4.0 on a CUDA 12.4 driver takes cu124 (rule 2)
    ("550.54.14", "2.4.0", ["8.9"], "cu124", "2"),
    # CUDA 12.2 driver: cu124 is too new, cu121 is the highest not newer
    ("535.104.05", "2.4.0", ["8.0"], "cu121", "2"),
    # a CUDA 12.0 driver on torch 2.6 (cu118/cu124/cu126): cu118 is the only one not newer
    ("525.60.13", "2.6.0", ["8.0"], "cu118", "2"),
    # driver newer than every variant (CUDA 13.2 vs cu126 max): the highest (rule 4)
    ("595.45.04", "2.6.0", ["9.0"], "cu126", "4"),
    ("580.65.06", "2.4.1", ["8.6", "8.6"], "cu124", "4"),
    # minor-version compatibility: CUDA 12.4 driver, torch 2.8 has cu126/cu128/cu129 (rule 3)
    ("550.54.14", "2.8.0", ["8.9"], "cu126", "3"),
    # old GPU (Pascal 6.1): rule 1 drops cu128/cu129 on torch 2.8, cu126 remains
    ("560.35.03", "2.8.0", ["6.1"], "cu126", "2"),
    ("575.51.03", "2.8.0", ["6.1"], "cu126", "2"),
    # the same driver with an Ada card takes the newest the driver runs
    ("575.51.03", "2.8.0", ["8.9"], "cu129", "2"),
    # Blackwell (12.0) needs cu128+: rule 1 drops cu126 even though the driver would prefer it
    ("570.124.06", "2.7.0", ["12.0"], "cu128", "2"),
    # mixed GPUs: every GPU must be covered (Volta drops cu128)
    ("570.124.06", "2.7.0", ["7.0", "8.0"], "cu126", "2"),
    # CUDA 13 driver with torch 2.13: cu130 fits 13.0
    ("580.65.06", "2.13.0", ["9.0"], "cu130", "2"),
    ("595.45.04", "2.13.0", ["10.0"], "cu132", "2"),
    # CUDA 11 era
    ("470.82.01", "1.13.1", ["7.5"], "cu116", "3"),  # rule 3 takes the lowest of the major
    ("515.43.04", "2.0.1", ["8.6"], "cu117", "2"),
]


@pytest.mark.parametrize(("driver", "torch", "ccs", "want", "rule"), CASES)
def test_variant_table(driver, torch, ccs, want, rule):
    choice = choose_variant(release_for(torch), facts(driver, *ccs))
    assert (choice.variant, choice.rule) == (want, rule), choice.steps


def test_rule_3_warns_about_jit():
    choice = choose_variant(release_for("2.8.0"), facts("550.54.14", "8.9"))
    assert choice.variant == "cu126"
    assert any("minor-version compatibility" in w and "560.28.03" in w for w in choice.warnings)


def test_cpu_only_machine_gets_cpu_build():
    choice = choose_variant(release_for("2.6.0"), facts(None))
    assert choice.variant == "cpu" and choice.rule == "cpu"
    assert "no NVIDIA driver" in choice.reason


@pytest.mark.parametrize(
    ("driver", "torch", "ccs", "in_message", "in_hint"),
    [
        # a driver older than every variant: name the driver, torch, variants, the fixes
        ("470.82.01", "2.8.0", ["8.6"], ["470.82.01", "2.8.0", "cu126, cu128, cu129"], "525.60.13"),
        ("550.54.14", "2.15.0", ["8.6"], ["cu130, cu132"], "580.65.06"),
        # an old GPU no variant covers: torch 2.15 dropped cu126, the last Pascal build
        ("580.65.06", "2.15.0", ["6.1"], ["compute capability 6.1"], "torch 2.14.1"),
        # a new GPU that an old torch cannot run
        ("550.54.14", "2.4.0", ["12.0"], ["compute capability 12.0"], "torch 2.11.0"),
    ],
)
def test_nothing_runs_names_driver_torch_variants_and_fix(driver, torch, ccs, in_message, in_hint):
    with pytest.raises(ProvisionError) as caught:
        choose_variant(release_for(torch), facts(driver, *ccs))
    for text in in_message:
        assert text in caught.value.message
    assert in_hint in (caught.value.hint or "")


def test_planned_gpu_without_driver_assumes_pypi_build():
    choice = choose_variant(release_for("2.6.0"), facts(None, "8.9", planned=True))
    assert choice.variant == "cu124" and choice.rule == "assumed"
    assert "525.60.13" in choice.reason


def test_asked_variant_is_checked_against_the_release():
    assert choose_variant(release_for("2.6.0"), facts(None), "pypi").variant == "cu124"
    assert choose_variant(release_for("2.6.0"), facts(None), "cu126").variant == "cu126"
    with pytest.raises(ProvisionError, match="no cu128 build"):
        choose_variant(release_for("2.6.0"), facts(None), "cu128")


def test_pin_rewritten_with_reason():
    plan = plan_torch(
        ["torch==2.4.0+cu121", "torchvision==0.19.0", "transformers==4.44.0"],
        facts("550.54.14", "8.9"),
        "3.11",
    )
    assert plan.requirements[:2] == ["torch==2.4.0+cu124", "torchvision==0.19.0+cu124"]
    assert plan.requirements[2] == "transformers==4.44.0"
    assert plan.rewrites[0] == "2.4.0+cu121 -> 2.4.0+cu124: driver 550.54.14 supports CUDA 12.4"
    assert plan.index.url == "https://download.pytorch.org/whl/cu124"
    assert plan.routed == ["torch", "torchvision"]


def test_pypi_route_when_variant_is_pypis_build():
    plan = plan_torch(
        ["torch==2.4.0+cu121", "torchvision", "torchaudio==2.4.0"],
        facts("535.104.05", "8.0"),
        "3.11",
        default_index="https://mirror.example/simple",
    )
    assert plan.index.route == "pypi" and plan.index.url == "https://mirror.example/simple"
    # the whole family, no local label, torchvision/torchaudio paired from the matrix
    assert plan.requirements == ["torch==2.4.0", "torchvision==0.19.0", "torchaudio==2.4.0"]
    assert "2.4.0+cu121 -> 2.4.0 (PyPI's build, cu121)" in plan.rewrites[0]


def test_family_always_one_variant_and_pairing_checked():
    with pytest.raises(ProvisionError, match="torchvision==0.18.0 is not built with torch 2.4.0"):
        plan_torch(["torch==2.4.0", "torchvision==0.18.0"], facts("550.54.14"), "3.11")
    with pytest.raises(ProvisionError, match="no torchaudio") as info:
        plan_torch(["torch==2.13.0", "torchaudio"], facts("580.65.06"), "3.11")
    # The hint names the newest pairing the matrix has, read from the data.
    assert "the last is torchaudio 2.11.0, with torch 2.11.0" in str(info.value)


def test_per_variant_packages_follow_the_family_off_pypi():
    plan = plan_torch(["torch==2.6.0", "xformers==0.0.29.post2"], facts("560.35.03", "8.0"), "3.11")
    assert plan.variant == "cu126" and "xformers" in plan.routed
    pypi = plan_torch(["torch==2.6.0", "xformers==0.0.29.post2"], facts("550.54.14"), "3.11")
    assert pypi.index.route == "pypi" and "xformers" not in pypi.routed


@pytest.mark.parametrize(
    ("choice", "url", "route", "fmt"),
    [
        (None, "https://download.pytorch.org/whl/cu126", "pytorch", "simple"),
        ("official", "https://download.pytorch.org/whl/cu126", "pytorch", "simple"),
        ("nju", "https://mirror.nju.edu.cn/pytorch/whl/cu126", "mirror:nju", "simple"),
        ("aliyun", "https://mirrors.aliyun.com/pytorch-wheels/cu126/", "mirror:aliyun", "flat"),
        ("https://m.example/whl/{variant}/", "https://m.example/whl/cu126/", "custom", "simple"),
        ("https://m.example/torch", "https://m.example/torch", "custom", "simple"),
    ],
)
def test_index_for_variant(choice, url, route, fmt):
    index = torch_index(release_for("2.6.0"), "cu126", choice)
    assert (index.url, index.route, index.format) == (url, route, fmt)


def test_index_pypi_refused_for_another_variant_and_bad_names():
    assert torch_index(release_for("2.6.0"), "cu124", "pypi").url == PYPI_URL
    with pytest.raises(ProvisionError, match="built with cu124, not cu126"):
        torch_index(release_for("2.6.0"), "cu126", "pypi")
    with pytest.raises(ProvisionError, match="not a mirror name"):
        torch_index(release_for("2.6.0"), "cu126", "tsinghua-please")


def test_bad_inputs_are_one_message():
    with pytest.raises(ProvisionError, match="torch 9.9.9 is not in provision's torch matrix"):
        plan_torch(["torch==9.9.9"], facts(None), "3.11")
    with pytest.raises(ProvisionError, match="no wheels for Python 3.7"):
        plan_torch(["torch==2.6.0"], facts(None), "3.7")
    with pytest.raises(ProvisionError, match="not of the form"):
        plan_torch(["torch==2.6.0"], facts(None), "three")
    with pytest.raises(ProvisionError, match="no exact torch pin"):
        plan_torch(["torch>=2"], facts(None), "3.11")
    with pytest.raises(ProvisionError, match="is not valid"):
        plan_torch(["torch==2.6.0", "not a requirement!!"], facts(None), "3.11")


def test_matrix_matches_the_reference():
    """The package's table agrees, row by row, with the reference it was written from
    (a copy of ../shared/reference/torch_matrix.json, which a clone does not have)."""
    reference = json.loads(REFERENCE.read_text())
    ours = matrix()
    for row in reference["releases"]:
        release = ours.releases[row["torch"]]
        verified = [
            v.split()[0].rstrip("?")
            for v in row["cuda_variants_on_download_pytorch_org"]
            if "UNVERIFIED" not in v
        ]
        assert list(release.variants) == verified, row["torch"]
        assert release.pypi_variant == row["pypi_linux_x86_64_default_cuda"]
        assert release.torchvision == row["torchvision"].split()[0]
        assert release.torchaudio == row["torchaudio"]
    # every variant named by a release has a row saying what it needs
    named = {v for r in ours.releases.values() for v in r.variants}
    assert named <= set(ours.variants)
    drivers = dict(reference["uv_torch_backend"]["LINUX_CUDA_DRIVERS"])
    for name, variant in ours.variants.items():
        if name == "cpu":
            continue
        # our minimum driver is never below what uv's table requires
        uv_min = drivers[name]
        assert tuple(map(int, variant.min_driver.split("."))) >= tuple(
            map(int, uv_min.split("."))
        ), name


def test_a_driver_older_than_any_known_cuda_names_the_drivers_that_would_do():
    with pytest.raises(ProvisionError, match="older than any CUDA version") as info:
        plan_torch(["torch==2.6.0"], facts("418.67"), "3.11")
    # From data/cuda_drivers.toml, not from a sentence in the code.
    assert "525.60.13 or newer runs every CUDA 12 build" in str(info.value)
    assert "580.65.06 or newer runs every CUDA 13 build" in str(info.value)
