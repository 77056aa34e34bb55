"""Issue 17: plan_torch parses a profile's common requirement lines without packaging (its import
is tens of ms of every `provision lock`); whatever it parses must read as packaging reads it, and
everything else still goes through packaging."""

from __future__ import annotations

import subprocess
import sys

import pytest
from packaging.requirements import InvalidRequirement, Requirement

from provision.errors import ProvisionError
from provision.torch_select import _parse, _parse_simple

LINES = [
    "torch==2.4.0", "torch == 2.4.0+cu124", "torchvision==0.19.0+cu124", "transformers>=4.44,<5",
    "accelerate", "Pillow", "qwen-vl-utils[decord]==0.0.8", "ms_swift[llm, eval]>=3.0.0",
    "flash_attn==2.6.3", "numpy<2", "vllm!=0.6.*", "peft~=0.12.0", "x===1.0", "x>=1.0rc1",
    "x==1.0.post2.dev3", "x==1.*", "A.b-c_d>=1", "trl>=0.9 , <0.12",
    # not the common form: packaging answers (or refuses)
    "torch==2.4.0; python_version>='3.9'", "x @ https://example.com/x.whl", "x (>=1.0)",
    "x~=1", "x>=1.0.*", "x>=1.0+cpu", "x==1.0,", "x[", "==1.0", "x==abc", "x==v1.0", "x>=1!2.0",
    "x==1.0.*+cpu", "-e .", "x[a]b", "", "x==1.0alpha1",
]  # fmt: skip


def _packaging(line: str):
    try:
        return Requirement(line)
    except InvalidRequirement:
        return None


@pytest.mark.parametrize("line", LINES)
def test_the_fast_path_reads_what_packaging_reads(line):
    fast = _parse_simple(line)
    real = _packaging(line)
    if fast is None:
        return  # packaging's turn (checked below: the answer is packaging's)
    assert real is not None, f"{line!r}: accepted here, refused by packaging"
    assert fast.name == real.name and set(fast.extras) == real.extras
    assert {(c.operator, c.version) for c in fast.specifier} == {
        (s.operator, s.version) for s in real.specifier
    }
    assert real.marker is None and real.url is None


def test_the_common_lines_take_the_fast_path_and_the_rest_packaging():
    common = LINES[: LINES.index("trl>=0.9 , <0.12") + 1]
    assert all(_parse_simple(line) is not None for line in common)
    assert _parse_simple("torch==2.4.0; python_version>='3.9'") is None
    assert _parse("x @ https://example.com/x.whl").url == "https://example.com/x.whl"
    with pytest.raises(ProvisionError, match="is not valid"):
        _parse("x==abc")


def test_locking_a_plain_profile_imports_neither_packaging_requirements_nor_metadata():
    code = (
        "import sys\n"
        "from provision.hardware.driver import DriverFacts\n"
        "from provision.lock.resolve import uv_version\n"
        "from provision.profiles import load_profile\n"
        "from provision.torch_select import plan_torch\n"
        "spec = load_profile('smolvlm-256m').task('infer')\n"
        "plan = plan_torch(spec.packages, DriverFacts(None, None, [], [], 'x', []), '3.11',"
        " variant='pypi')\n"
        "print(plan.requirements, uv_version())\n"
        "print('LOADED', [m for m in ('packaging.requirements', 'importlib.metadata')"
        " if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in proc.stdout, proc.stdout
    from importlib.metadata import version

    assert proc.stdout.split("]")[1].split()[0] == version("uv")  # the same answer, cheaper
