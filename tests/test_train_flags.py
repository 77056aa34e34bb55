"""The training launch lines `provision check --emit` prints (issue 12 items 5 and 8) start as
printed: every flag is one the pinned stack's own parser has, every XTuner --cfg-options key is in
the config the line names, LLaMA-Factory gets a template 0.9.2 has for the model, and each line
carries a dataset (the stack's demo one unless --dataset names another).

provision/data/train_flags.toml and tests/fixtures/llamafactory-0.9.2-templates.json were read
from the stacks' wheels by scripts/train_flags.py (their sha256 are in the files)."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from provision.launch import launch_for
from provision.memory import FitRequest, resolve_request, stacks
from provision.profiles import list_profiles, load_profile
from provision.resources import load_table
from tests.cli_helpers import invoke, invoke_json, result_of

FLAGS = load_table("train_flags.toml")["stack"]
TRAINING = ("llama-factory", "ms-swift", "xtuner")
# LLaMA-Factory 0.9.2's templates and multimodal model groups (the source is inside the file).
LF = json.loads(
    (Path(__file__).parent / "fixtures" / "llamafactory-0.9.2-templates.json").read_text("utf-8")
)


def _launch(profile, req, gpus=1, dataset=None):
    return launch_for(profile, resolve_request(profile, req), gpus, dataset)


def assert_known(stack: str, argv: list[str], names_only: bool = False) -> None:
    """Every --flag (and, for XTuner, every --cfg-options key and --deepspeed name) is one the
    pinned version has."""
    table = FLAGS[stack]
    assert table["version"] == stacks()[stack]["launch"]["version"]
    flags = [a for a in argv if a.startswith("--")]
    unknown = [f for f in flags if f not in table["flags"]]
    assert not unknown, f"{stack} {table['version']} has no {unknown} (argv {argv})"
    if names_only:
        return
    if stack == "ms-swift" and "--deepspeed" in argv[:-1]:
        assert argv[argv.index("--deepspeed") + 1] in table["deepspeed"]
    if stack != "xtuner" or "train" not in argv:
        return
    config = argv[argv.index("train") + 1]
    if config == stacks()["xtuner"]["launch"]["config_missing"]:
        return
    keys = table["config_keys"][config]
    if "--cfg-options" in argv:
        sets = argv[argv.index("--cfg-options") + 1 :]
        missing = [kv for kv in sets if kv.partition("=")[0] not in keys]
        assert not missing, f"{config} has no {missing}"
    if "--deepspeed" in argv:
        assert argv[argv.index("--deepspeed") + 1] in table["deepspeed"]


def test_the_tables_are_for_the_pinned_versions_and_name_their_wheels():
    for stack in TRAINING:
        table = FLAGS[stack]
        assert table["version"] == stacks()[stack]["launch"]["version"]
        assert "sha256" in table["source"] and table["version"] in table["source"]
        assert len(table["flags"]) > 5 and all(f.startswith("-") for f in table["flags"])
    # HfArgumentParser stacks: the transformers fields are there (Trainer's own arguments).
    for stack in ("llama-factory", "ms-swift"):
        assert {"--per_device_train_batch_size", "--deepspeed", "--output_dir"} <= set(
            FLAGS[stack]["flags"]
        )
    assert "sha256" in LF["source"] and "llamafactory-0.9.2" in LF["source"]


def test_a_flag_the_stack_lacks_is_caught():
    """Each stack's names are its own: LLaMA-Factory has no --train_type, ms-swift no
    --finetuning_type, XTuner's InternVL2-2B config no model.llm_lora.rank."""
    with pytest.raises(AssertionError, match="--train_type"):
        assert_known("llama-factory", ["llamafactory-cli", "train", "--train_type", "lora"])
    with pytest.raises(AssertionError, match="--finetuning_type"):
        assert_known("ms-swift", ["swift", "sft", "--finetuning_type", "lora"])
    bad = "internvl_v2_internlm2_2b_lora_finetune --cfg-options model.llm_lora.rank=8"
    with pytest.raises(AssertionError, match="model.llm_lora.rank"):
        assert_known("xtuner", ["xtuner", "train", *bad.split()])


def test_every_flag_the_training_launch_tables_name_is_the_stack_s():
    for stack in TRAINING:
        launch = stacks()[stack]["launch"]
        named = [v for v in launch.values() if isinstance(v, str) and v.startswith("--")]
        named = [v for v in named if " " not in v]  # flag names, not the notes
        named += [a for a in launch.get("qlora", []) if a.startswith("--")]
        named += shlex.split(launch["command"].format(repo="r", config="c"))
        assert_known(stack, [a for a in named if a.startswith("--")], names_only=True)
    xtuner = stacks()["xtuner"]["launch"]
    cfg_keys = [v[4:] for v in xtuner.values() if isinstance(v, str) and v.startswith("cfg:")]
    for base in xtuner["configs"].values():
        for task, suffix in xtuner["config_suffix"].items():
            keys = FLAGS["xtuner"]["config_keys"][base + suffix]
            wanted = [k for k in cfg_keys if task != "full" or "lora" not in k]
            assert set(wanted) <= set(keys), (base + suffix, set(wanted) - set(keys))
    for n in xtuner["zero_stages"]:
        assert xtuner["zero_format"].format(n=n) in FLAGS["xtuner"]["deepspeed"]
    for n in xtuner["zero_offload_stages"]:
        assert xtuner["zero_offload_format"].format(n=n) in FLAGS["xtuner"]["deepspeed"]
    swift = stacks()["ms-swift"]["launch"]
    for n in (1, 2, 3):
        assert swift["zero_format"].format(n=n) in FLAGS["ms-swift"]["deepspeed"]
    for n in swift["zero_offload_stages"]:
        assert swift["zero_offload_format"].format(n=n) in FLAGS["ms-swift"]["deepspeed"]


REQUESTS = [
    FitRequest(task="lora", batch=2, seq=4096),
    FitRequest(task="qlora", gradient_checkpointing=False, train_vision="lora"),
    FitRequest(task="full", zero=3, cpu_offload=True, train_vision="full"),
    FitRequest(task="lora", zero=2),
]


@pytest.mark.parametrize("gpus", [1, 2])
def test_every_builtin_profile_s_training_line_uses_known_flags_and_has_a_dataset(gpus):
    seen: set[str] = set()
    for profile in list_profiles():
        for stack in TRAINING:
            for req in REQUESTS:
                launch = _launch(profile, replace(req, stack=stack), gpus)
                assert launch is not None
                assert_known(stack, launch.argv)
                assert shlex.split(launch.line) == launch.argv
                seen.update(a for a in launch.argv if a.startswith("--"))
                if stack == "xtuner":
                    continue  # the config names its data (checked below)
                assert launch.argv[launch.argv.index("--dataset") + 1] == launch.dataset
                assert launch.dataset == stacks()[stack]["launch"]["demo_dataset"]
                assert launch.dataset_note
    for flag in ("--template", "--dataset", "--output_dir", "--per_device_train_batch_size"):
        assert flag in seen
    for flag in ("--cutoff_len", "--max_length", "--lora_rank", "--deepspeed", "--cfg-options"):
        assert flag in seen


def test_llama_factory_templates_are_0_9_2_s_multimodal_ones_for_these_models():
    """Each template provision prints exists in 0.9.2's template.py with a multimodal plugin,
    and 0.9.2's model list files this model's repository under it."""
    templates = stacks()["llama-factory"]["launch"]["templates"]
    for name in set(templates.values()):
        assert LF["templates"][name] != "base", name
    checked = 0
    for profile in list_profiles():
        template = templates.get(profile.architecture)
        if template is None:
            continue
        assert profile.hf_repo in LF["multimodal_repos"][template], profile.name
        checked += 1
    assert checked >= 5  # Qwen2-VL, Qwen2.5-VL x2, Llama 3.2 Vision, LLaVA-1.5 (HF format)


@pytest.mark.parametrize("name", ["internvl2-2b", "gemma-3-12b-it", "smolvlm-256m"])
def test_a_model_llama_factory_0_9_2_cannot_train_is_said_not_given_a_template(name):
    profile = load_profile(name)
    # No 0.9.2 multimodal template lists this repository, and none is named for its family.
    assert not any(profile.hf_repo in repos for repos in LF["multimodal_repos"].values())
    assert not {"intern_vl", "gemma3", "idefics3", "smolvlm"} & set(LF["templates"])
    launch = _launch(profile, FitRequest(task="lora", stack="llama-factory"))
    template = launch.argv[launch.argv.index("--template") + 1]
    assert template == "NO_TEMPLATE_IN_0.9.2" and launch.placeholders == [template]
    assert template not in LF["templates"]
    note = next(n for n in launch.notes if "cannot train" in n)
    assert f"llama-factory 0.9.2 cannot train {profile.architecture}" in note
    assert "--stack ms-swift" in note  # ms-swift 3.4.1 registers all three architectures
    assert launch.to_json()["runs_as_printed"] is False


def test_ms_swift_infers_the_template_and_says_when_it_knows_no_such_model():
    for profile in list_profiles():
        assert profile.architecture in FLAGS["ms-swift"]["architectures"], profile.name
    qwen = load_profile("qwen2-vl-2b")
    launch = _launch(qwen, FitRequest(task="lora", stack="ms-swift"))
    assert "--template" not in launch.argv and not launch.notes and not launch.placeholders
    odd = replace(qwen, architecture="NotAModelForCausalLM")
    launch = _launch(odd, FitRequest(task="lora", stack="ms-swift"))
    assert any("ms-swift 3.4.1 cannot train NotAModelForCausalLM" in n for n in launch.notes)


def test_the_seeds_xtuner_internvl2_2b_lora_run_is_what_emit_prints():
    """Issue 12 item 8: XTuner's InternVL2-2B LoRA config at rank 128, alpha 256, batch 4,
    max_length 8192, max_dynamic_patch 12 is the line `--batch 4 --seq 8192` prints."""
    args = ("check", "internvl2-2b", "--stack", "xtuner", "--task", "lora", "--batch", "4")
    args += ("--seq", "8192", "--gpu", "A100-80GB", "--emit")
    code, result = invoke_json(*args)
    assert code == 0, result
    launch = result["launch"]
    config = "internvl_v2_internlm2_2b_lora_finetune"
    assert launch["argv"] == [
        "xtuner",
        "train",
        config,
        "--cfg-options",
        "train_dataloader.batch_size=4",
        "train_dataloader.dataset.max_length=8192",
        "model.llm_lora.r=128",
    ]
    assert_known("xtuner", launch["argv"])
    # The config ships in XTuner 0.1.23 for this model, with the seed's alpha and length.
    shipped = FLAGS["xtuner"]["config_values"][config]
    assert shipped["path"] == load_profile("internvl2-2b").hf_repo
    assert shipped["model.llm_lora.r"] == 128 and shipped["model.llm_lora.lora_alpha"] == 256
    assert shipped["train_dataloader.dataset.max_length"] == 8192
    assert shipped["train_dataloader.batch_size"] == 8  # so the line sets the seed's 4
    # max_dynamic_patch 12 + thumbnail: 13 tiles x 256 tokens per image, as the check sized it.
    assert result["fit"]["request"]["image_tokens"] == 3328
    assert launch["dataset"] is None and "llava_v1_5_mix665k.json" in launch["dataset_note"]
    assert shipped["train_dataloader.dataset.data_paths"].endswith("llava_v1_5_mix665k.json")
    assert launch["runs_as_printed"] is True
    proc = invoke(*args[:-1], "--max-tiles", "6", "--emit")
    assert "--max-tiles 6 cannot be passed on its line" in " ".join(proc.stdout.split())


def test_dataset_option_end_to_end_text_and_json():
    base = ("check", "qwen2.5-vl-7b", "--task", "lora", "--gpu", "A100-80GB")
    lf = (*base, "--stack", "llama-factory", "--emit")
    proc = invoke(*lf)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("llamafactory-cli train"))
    argv = shlex.split(line)
    assert argv[argv.index("--template") + 1] == "qwen2_vl"
    assert argv[argv.index("--dataset") + 1] == "mllm_demo"
    assert argv[argv.index("--output_dir") + 1] == "saves/qwen2.5-vl-7b/lora"
    assert_known("llama-factory", argv)
    assert "note: the dataset is LLaMA-Factory's mllm_demo" in proc.stdout
    assert "does not run as printed" not in proc.stdout
    launch = result_of(invoke("--json", *lf))["launch"]
    assert launch["argv"] == argv and launch["line"] == line
    assert launch["template"] == "qwen2_vl" and launch["dataset"] == "mllm_demo"
    assert launch["output_dir"] == "saves/qwen2.5-vl-7b/lora" and launch["runs_as_printed"]
    assert "mllm_demo" in launch["dataset_note"]

    # One's own dataset: in the line, and the note says how the stack finds it. --dataset alone
    # asks for the launch line (no --emit needed).
    proc = invoke(*base, "--stack", "llama-factory", "--dataset", "my_chats")
    assert proc.returncode == 0 and "--dataset my_chats" in proc.stdout
    assert "dataset_info.json" in proc.stdout and "mllm_demo" not in proc.stdout
    code, result = invoke_json(*base, "--stack", "ms-swift", "--dataset", "data/train #1.jsonl")
    assert code == 0
    argv = result["launch"]["argv"]
    assert argv[argv.index("--dataset") + 1] == "data/train #1.jsonl"
    assert shlex.split(result["launch"]["line"]) == argv  # quoted for the shell
    assert result["launch"]["dataset"] == "data/train #1.jsonl"
    code, result = invoke_json(*base, "--stack", "ms-swift", "--emit")
    assert result["launch"]["dataset"] == "AI-ModelScope/LaTeX_OCR:human_handwrite#20000"
    xt = ("check", "internvl2-2b", "--task", "lora", "--stack", "xtuner", "--gpu", "A100-80GB")
    code, result = invoke_json(*xt, "--dataset", "/data/my.json")
    argv = result["launch"]["argv"]
    assert "train_dataloader.dataset.data_paths=/data/my.json" in argv
    assert "image_folders" in result["launch"]["dataset_note"]
    assert_known("xtuner", argv)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("qwen2-vl-2b", "--dataset", "x"), "launch line; --task infer has none"),
        (
            ("qwen2-vl-2b", "--task", "lora", "--stack", "peft", "--dataset", "x"),
            "stack peft has no launch line",
        ),
        (("qwen2-vl-2b", "--task", "lora", "--dataset", " "), "is not a dataset name or path"),
    ],
)
def test_a_dataset_where_it_cannot_go_is_one_message(args, message):
    proc = invoke("check", *args, "--gpu", "A100-80GB")
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out
    assert message in out and "Traceback" not in out


def test_a_missing_xtuner_config_is_a_placeholder_not_a_model_xtuner_cannot_train():
    launch = _launch(load_profile("internvl2-1b"), FitRequest(task="lora", stack="xtuner"))
    assert (
        launch.placeholders == ["YOUR_XTUNER_CONFIG.py"] and not launch.to_json()["runs_as_printed"]
    )
    assert not any("cannot train" in n for n in launch.notes)
    assert any("ships no config for internvl2-1b" in n for n in launch.notes)


EXAMPLES = Path(__file__).parent / "fixtures" / "launch-examples"  # copied from the tags


@pytest.mark.parametrize(
    ("example", "profile"),
    [("qwen2vl_lora_sft", "qwen2-vl-2b"), ("llava1_5_lora_sft", "llava-1.5-7b-hf")],
)
def test_llama_factory_s_own_examples_agree_with_the_line(example, profile):
    """LLaMA-Factory 0.9.2's example for the family trains on mllm_demo with the template the line
    names, and every key the example sets is an option in train_flags.toml (the table is not
    missing what the project itself uses)."""
    keys = yaml.safe_load((EXAMPLES / f"llamafactory-0.9.2-{example}.yaml").read_text("utf-8"))
    launch = _launch(load_profile(profile), FitRequest(task="lora", stack="llama-factory"))
    assert launch.template == keys["template"]
    assert launch.dataset in keys["dataset"].split(",")
    assert "output_dir" in keys and launch.output_dir
    assert_known("llama-factory", [f"--{k}" for k in keys])


def test_ms_swift_s_own_ocr_example_is_the_demo_dataset_and_its_flags_are_known():
    script = (EXAMPLES / "ms-swift-3.4.1-ocr.sh").read_text("utf-8")
    argv = shlex.split(script.replace("\\\n", " "), comments=True)
    assert argv[argv.index("--dataset") + 1] == stacks()["ms-swift"]["launch"]["demo_dataset"]
    assert "--template" not in argv  # ms-swift's own example leaves it to the model
    assert_known("ms-swift", argv)


def test_ms_swift_is_told_the_internvl_tiles_the_check_sized():
    """ms-swift 3.4.1's InternVL template takes up to MAX_NUM tiles (default 12) + a thumbnail:
    without MAX_NUM the run would cut 13 tiles where the check sized the profile's 6 + 1."""
    internvl = load_profile("internvl2-2b")
    req = resolve_request(internvl, FitRequest(task="lora", stack="ms-swift"))
    launch = launch_for(internvl, req, 1)
    assert req.image_tokens == 7 * 256 and launch.argv[0] == "MAX_NUM=6"
    wide = _launch(internvl, FitRequest(task="lora", stack="ms-swift", max_tiles=12))
    assert wide.argv[0] == "MAX_NUM=12"
    # Other families take no tile cap from ms-swift: nothing set for them.
    smol = _launch(load_profile("smolvlm-256m"), FitRequest(task="lora", stack="ms-swift"))
    assert not any(a.startswith("MAX_NUM=") for a in smol.argv)


def test_llama_factory_starts_deepspeed_under_torchrun_even_on_one_gpu():
    """0.9.2 refuses --deepspeed outside torchrun and only starts torchrun itself on 2+ GPUs."""
    qwen = load_profile("qwen2-vl-2b")
    one = _launch(qwen, FitRequest(task="lora", stack="llama-factory", zero=3, cpu_offload=True))
    assert one.argv[0] == "FORCE_TORCHRUN=1" and "--deepspeed" in one.argv
    plain = _launch(qwen, FitRequest(task="lora", stack="llama-factory"))
    assert not any(a.startswith("FORCE_TORCHRUN") for a in plain.argv)
