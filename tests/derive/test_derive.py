"""Profiles derived from hub metadata: numbers against the curated profiles and the repos' own
totals, the request budget, the cache, and one clear message per problem."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from provision.derive import Ref, derive, parse_ref
from provision.derive.build import family_table, lookup_family, part_of
from provision.errors import ProvisionError
from provision.profiles import load_profile
from tests.derive.conftest import FIXTURES, copy_configs
from tests.derive.headers import write_sparse_safetensors

# Built-in profile -> the hub repo its numbers describe (configs in tests/fixtures/hub-configs).
CURATED = {
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "llava-1.5-7b-hf": "llava-hf/llava-1.5-7b-hf",
    "llama-3.2-11b-vision": "meta-llama/Llama-3.2-11B-Vision-Instruct",
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
}
SHAPE_KEYS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab")
IMAGE_KEYS = ("encoder_hidden", "encoder_layers", "encoder_heads", "tokens", "max_tokens")


def close(a: int, b: int, share: float) -> bool:
    return abs(a - b) <= share * b


@pytest.mark.parametrize("name", sorted(CURATED))
def test_derived_profile_matches_the_curated_one(derive_env, name: str) -> None:
    curated = load_profile(name)
    # @main: a revision, so the repo id is derived rather than resolved to the built-in.
    derived = load_profile(f"{CURATED[name]}@main")
    assert derived.derived is not None and curated.derived is None
    for key in ("total", "vision", "language"):
        assert close(derived.params[key], curated.params[key], 0.005), key
    assert close(derived.weights["bytes"], curated.weights["bytes"], 0.005)
    assert derived.weights["dtype"] == curated.weights["dtype"]
    for key in SHAPE_KEYS:
        assert close(derived.text[key], curated.text[key], 0.005), key
    assert derived.text["tie_word_embeddings"] == curated.text["tie_word_embeddings"]
    for key in ("cross_attention_layers", "sliding_window", "global_layers", "config_max_len"):
        assert derived.text.get(key) == curated.text.get(key), key
    for key in IMAGE_KEYS:
        if key in curated.image:
            assert derived.image.get(key) == curated.image[key], key
    assert derived.image["in_text_sequence"] == curated.image.get("in_text_sequence", True)
    assert derived.architecture == curated.architecture
    assert derived.family == curated.family
    # the packages carry the same torch and transformers as the curated profile's
    pins = {p for p in derived.task("infer").packages if p.startswith(("torch==", "transformers"))}
    assert pins == {
        p for p in curated.task("infer").packages if p.startswith(("torch==", "transformers"))
    }


@pytest.mark.parametrize("repo", ["Qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen3-VL-4B-Instruct"])
def test_other_models_are_within_one_percent_of_their_stated_total(derive_env, repo) -> None:
    """The real index's total_size (bf16: 2 bytes per parameter) is the stated total."""
    folder = FIXTURES / repo.replace("/", "--")
    stated = json.loads((folder / "model.safetensors.index.json").read_text())["metadata"]
    profile = load_profile(repo)
    assert close(profile.params["total"], stated["total_size"] // 2, 0.01)
    assert close(profile.weights["bytes"], stated["total_size"], 0.01)
    assert profile.params["vision"] > 0.04 * profile.params["total"]
    assert not profile.derived.get("approximate")


def test_gemma3_gets_its_sliding_window_from_config_and_class_defaults(derive_env) -> None:
    profile = load_profile("google/gemma-3-4b-it")
    assert profile.text["sliding_window"] == 1024
    assert profile.text["global_layers"] == 34 // 6
    assert profile.text["head_dim"] == 256 and profile.text["heads"] == 8  # from q_proj rows
    assert profile.image["tokens"] == 256


@pytest.mark.parametrize(
    "folder",
    [
        "Qwen--Qwen2-VL-2B-Instruct",
        "Qwen--Qwen2-VL-7B-Instruct",
        "Qwen--Qwen2.5-VL-7B-Instruct",
        "Qwen--Qwen3-VL-4B-Instruct",
        "llava-hf--llava-1.5-7b-hf",
    ],
)
def test_the_family_table_sorts_every_real_checkpoint_name(folder: str) -> None:
    """The hub's own tensor names (the real index's weight_map) all land in a known part."""
    config = json.loads((FIXTURES / folder / "config.json").read_text())
    weight_map = json.loads((FIXTURES / folder / "model.safetensors.index.json").read_text())
    _, family, known = lookup_family(config)
    assert known
    parts = {name: part_of(name, family) for name in weight_map["weight_map"]}
    assert "other" not in parts.values()
    assert {"vision", "projector", "language"} <= set(parts.values())
    assert parts.get("lm_head.weight", "language") == "language"


def test_cold_check_makes_two_range_reads_per_shard_plus_the_config_files(
    derive_env, derive_hub
) -> None:
    derive_hub.reset_counters()
    profile = load_profile("Qwen/Qwen2.5-VL-7B-Instruct@main")
    requests = derive_hub.requests
    ranged = [r for r in requests if r.range]
    shards = {r.file for r in ranged}
    assert len(shards) == 5
    assert len(ranged) <= 2 * len(shards)
    assert all(r.range.startswith("bytes=0-") or r.range.startswith("bytes=") for r in ranged)
    plain = [r for r in requests if not r.range]
    # one listing, config, preprocessor, generation config, the index: nothing else
    assert len(plain) == 5, [r.path for r in plain]
    assert not any(r.file and r.file.endswith(".safetensors") and not r.range for r in requests)
    assert profile.derived["requests"] == len(requests)
    # warm: no request at all, offline too
    derive_hub.reset_counters()
    derive_env_offline = load_profile("Qwen/Qwen2.5-VL-7B-Instruct@main", offline=True)
    assert derive_hub.requests == []
    assert derive_env_offline.params == profile.params
    assert derive_env_offline.derived["commit"] == profile.derived["commit"]


def test_offline_without_a_cache_says_so(derive_env, derive_hub) -> None:
    derive_hub.reset_counters()
    with pytest.raises(ProvisionError, match="No cached metadata.*offline"):
        load_profile("Qwen/Qwen2-VL-2B-Instruct@main", offline=True)
    assert derive_hub.requests == []


def test_a_builtin_profiles_repo_id_is_that_profile(offline, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PROVISION_METADATA_CACHE", str(tmp_path))
    assert load_profile("Qwen/Qwen2.5-VL-7B-Instruct").name == "qwen2.5-vl-7b"
    assert load_profile("qwen/qwen2-vl-2b-instruct").name == "qwen2-vl-2b"


def test_a_gated_repo_without_a_token_gets_one_message(
    derive_env, derive_hub, tmp_path, monkeypatch
) -> None:
    folder = copy_configs(FIXTURES / "HuggingFaceTB--SmolVLM-256M-Instruct", tmp_path / "g")
    # a link, not a copy: the sparse checkpoint's 0.5 GB of holes would be read and written
    os.link(
        derive_hub.repos["HuggingFaceTB/SmolVLM-256M-Instruct"]
        .commits[derive_hub.repos["HuggingFaceTB/SmolVLM-256M-Instruct"].refs["main"]][
            "model.safetensors"
        ]
        .object_path,
        folder / "model.safetensors",
    )
    derive_hub.add_repo("gated-org/smol", folder, gated=True, unhashed=("*.safetensors",))
    with pytest.raises(ProvisionError) as err:
        load_profile("gated-org/smol")
    assert "gated" in str(err.value) and "HF_TOKEN" in err.value.hint
    derive_hub.grant("hf_secret_token_value", "gated-org/smol")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    profile = load_profile("gated-org/smol")
    assert profile.gated  # the listing said so
    assert "hf_secret_token_value" not in profile.path.read_text()
    assert profile.params["total"] == 256484928


def test_only_bin_weights_fall_back_to_the_index_total(derive_env, derive_hub, tmp_path) -> None:
    src = FIXTURES / "liuhaotian--llava-v1.5-7b"
    folder = copy_configs(src, tmp_path / "bin")
    shutil.copy(
        src / "pytorch_model.bin.index.metadata-only.PARTIAL.json",
        folder / "pytorch_model.bin.index.json",
    )
    derive_hub.add_repo("liuhaotian/llava-v1.5-7b", folder)
    profile = load_profile("liuhaotian/llava-v1.5-7b@main")
    assert profile.weights["bytes"] == 13518798848
    assert profile.params["total"] == 13518798848 // 2
    assert profile.weights["format"] == "pytorch"
    approx = " ".join(profile.derived["approximate"])
    assert "total_size" in approx and "CLIP vision tower" in approx
    assert profile.task("infer").stack == "llava"


def test_only_bin_weights_without_an_index_estimate_from_the_config(
    derive_env, derive_hub, tmp_path
) -> None:
    folder = copy_configs(FIXTURES / "liuhaotian--llava-v1.5-7b", tmp_path / "bin2")
    derive_hub.add_repo("someone/bin-only", folder)
    profile = load_profile("someone/bin-only")
    assert "estimated from the config" in " ".join(profile.derived["approximate"])
    # Llama-2-7B shapes: 6.74 B parameters
    assert close(profile.params["total"], 6_738_415_616, 0.01)


def test_a_repo_without_config_gets_one_message(derive_env, derive_hub, tmp_path) -> None:
    folder = tmp_path / "noconf"
    folder.mkdir()
    (folder / "README.md").write_text("weights elsewhere\n")
    derive_hub.add_repo("someone/no-config", folder)
    with pytest.raises(ProvisionError, match="no config.json"):
        load_profile("someone/no-config")


def _internvl_folder(tmp_path: Path) -> Path:
    """InternVL2-1B's real configs; the Qwen2 language model's real tensors (meta device, as
    recorded from its llm_config) under language_model., a few vision and projector tensors
    (InternViT is remote code)."""
    from tests.derive.headers import recorded_tensors

    folder = copy_configs(FIXTURES / "OpenGVLab--InternVL2-1B", tmp_path / "ivl")
    recorded = recorded_tensors("OpenGVLab--InternVL2-1B.llm_config")
    tensors = [(f"language_model.{n}", d, s) for n, d, s in recorded]
    tensors += [
        ("vision_model.embeddings.patch_embedding.weight", "BF16", [1024, 3, 14, 14]),
        ("mlp1.1.weight", "BF16", [896, 4096]),
    ]
    write_sparse_safetensors(folder, tensors)
    return folder


def test_a_remote_code_family_is_marked(derive_env, derive_hub, tmp_path) -> None:
    # "*.safetensors": the old "*.st*" matched no shard, so its 1 GB of holes was hashed
    derive_hub.add_repo(
        "OpenGVLab/InternVL2-1B", _internvl_folder(tmp_path), unhashed=("*.safetensors",)
    )
    profile = load_profile("OpenGVLab/InternVL2-1B@main")
    assert profile.trust_remote_code
    assert any("trust_remote_code" in n for n in profile.derived["notes"])
    infer = profile.task("infer")
    assert infer.stack == "lmdeploy" and "timm==1.0.15" in infer.packages
    assert profile.image["tokens"] == 1792 and profile.image["max_tokens"] == 3328
    assert profile.text["layers"] == 24 and profile.text["vocab"] == 151655


def test_an_unknown_architecture_is_approximate_not_silent(derive_env, derive_hub, tmp_path):
    folder = tmp_path / "unk"
    folder.mkdir()
    config = {
        "architectures": ["FancyVLForCausalLM"],
        "model_type": "fancy_vl",
        "torch_dtype": "bfloat16",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 100,
        "max_position_embeddings": 2048,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tensors = [
        ("model.embed_tokens.weight", "BF16", [100, 64]),
        ("model.layers.0.mlp.up_proj.weight", "BF16", [128, 64]),
        ("model.layers.1.mlp.up_proj.weight", "BF16", [128, 64]),
        ("vision_tower.patch.weight", "BF16", [64, 3, 14, 14]),
    ]
    write_sparse_safetensors(folder, tensors)
    derive_hub.add_repo("lab/fancy-vl", folder)
    profile = load_profile("lab/fancy-vl")
    approx = " ".join(profile.derived["approximate"])
    assert "unknown architecture FancyVLForCausalLM" in approx and "image" in approx
    assert profile.params["vision"] == 64 * 3 * 14 * 14
    assert profile.params["total"] == 100 * 64 + 2 * 128 * 64 + 64 * 3 * 14 * 14
    assert profile.task("infer").stack == "transformers"


def test_a_gptq_checkpoint_is_sized_by_its_real_bytes(derive_env, derive_hub, tmp_path) -> None:
    folder = tmp_path / "gptq"
    folder.mkdir()
    config = json.loads((FIXTURES / "Qwen--Qwen2-VL-2B-Instruct" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = [
        ("model.layers.0.mlp.up_proj.qweight", "I32", [1536 // 8, 8960]),
        ("model.layers.0.mlp.up_proj.scales", "F16", [1536 // 128, 8960]),
        ("model.layers.0.mlp.up_proj.qzeros", "I32", [1536 // 128, 8960 // 8]),
        ("model.embed_tokens.weight", "F16", [151936, 1536]),
    ]
    write_sparse_safetensors(folder, tensors)
    derive_hub.add_repo("lab/qwen2-vl-gptq", folder, unhashed=("*.safetensors",))  # sparse
    profile = load_profile("lab/qwen2-vl-gptq")
    real = 1536 // 8 * 8960 * 4 + 1536 // 128 * 8960 * 2 + 1536 // 128 * 8960 // 8 * 4
    real += 151936 * 1536 * 2
    assert profile.weights["bytes"] == real
    assert profile.params["total"] == 1536 * 8960 + 151936 * 1536


def test_moe_reports_active_and_total(derive_env, derive_hub, tmp_path) -> None:
    folder = tmp_path / "moe"
    folder.mkdir()
    config = {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "torch_dtype": "bfloat16",
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 100,
        "num_experts": 4,
        "num_experts_per_tok": 1,
        "max_position_embeddings": 2048,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tensors = [("model.embed_tokens.weight", "BF16", [100, 64])] + [
        (f"model.layers.0.mlp.experts.{i}.up_proj.weight", "BF16", [128, 64]) for i in range(4)
    ]
    write_sparse_safetensors(folder, tensors)
    derive_hub.add_repo("lab/tiny-moe", folder)
    profile = load_profile("lab/tiny-moe")
    assert profile.params["total"] == 100 * 64 + 4 * 128 * 64
    assert profile.params["active"] == 100 * 64 + 128 * 64


def test_modelscope_serves_the_same_range_reads(derive_env, derive_hub) -> None:
    derive_hub.reset_counters()
    profile = load_profile("modelscope:HuggingFaceTB/SmolVLM-256M-Instruct@master")
    assert profile.params["total"] == 256484928
    assert profile.modelscope_repo == "HuggingFaceTB/SmolVLM-256M-Instruct"
    ranged = [r for r in derive_hub.requests if r.range]
    assert 1 <= len(ranged) <= 2 and all("FilePath=model.safetensors" in r.path for r in ranged)


def test_a_local_folder_is_a_profile_too(model_folders) -> None:
    folder = model_folders["HuggingFaceTB/SmolVLM-256M-Instruct"]
    result = derive(Ref(repo_id=folder.name, folder=folder))
    assert result.data["params"]["total"] == 256484928
    assert parse_ref(str(folder)).folder == folder


@pytest.mark.parametrize(
    ("text", "repo", "revision", "source"),
    [
        ("Qwen/Qwen2.5-VL-32B-Instruct", "Qwen/Qwen2.5-VL-32B-Instruct", None, None),
        ("org/name@v1.0", "org/name", "v1.0", None),
        ("ms:org/name", "org/name", None, "modelscope"),
        ("hf-mirror:org/name@abc", "org/name", "abc", "hf-mirror"),
    ],
)
def test_repo_refs_parse(text, repo, revision, source) -> None:
    ref = parse_ref(text)
    assert (ref.repo_id, ref.revision, ref.source) == (repo, revision, source)


@pytest.mark.parametrize("text", ["qwen2.5-vl-7b", "a/b/c", "x.toml", "org/../etc"])
def test_names_that_are_not_repo_refs(text) -> None:
    assert parse_ref(text) is None


def test_an_unknown_source_prefix_is_named() -> None:
    with pytest.raises(ProvisionError, match="Unknown source 'hff'"):
        parse_ref("hff:org/name")


def test_a_shard_name_that_escapes_is_refused(derive_env, derive_hub, tmp_path) -> None:
    folder = copy_configs(FIXTURES / "HuggingFaceTB--SmolVLM-256M-Instruct", tmp_path / "esc")
    index = {"metadata": {"total_size": 1}, "weight_map": {"a": "../../etc/x.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    derive_hub.add_repo("bad/escape", folder)
    with pytest.raises(ProvisionError, match="names a shard"):
        load_profile("bad/escape")


def test_a_header_whose_offsets_lie_is_refused(derive_env, derive_hub, tmp_path) -> None:
    folder = copy_configs(FIXTURES / "HuggingFaceTB--SmolVLM-256M-Instruct", tmp_path / "lie")
    header = json.dumps(
        {"w": {"dtype": "BF16", "shape": [1000, 1000], "data_offsets": [0, 10]}}
    ).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 10)
    derive_hub.add_repo("bad/offsets", folder)
    with pytest.raises(ProvisionError, match="data_offsets"):
        load_profile("bad/offsets")


def test_every_family_names_known_package_sets_and_stacks() -> None:
    from provision.memory import stacks

    table = family_table()
    entries = [*table["families"].values(), *table["architectures"].values(), table["unknown"]]
    for entry in entries:
        for set_name in entry["packages"].values():
            assert table["package_sets"][set_name]["stack"] in stacks()


def test_a_password_in_the_source_url_is_written_nowhere(derive_env, derive_hub, monkeypatch):
    url = derive_hub.url.replace("http://", "http://alice:s3cret-pass@")
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("PROVISION_SOURCES", url)
    profile = load_profile("HuggingFaceTB/SmolVLM-256M-Instruct@main")
    assert profile.params["total"] == 256484928
    assert any(
        r.path.startswith("/api/models/HuggingFaceTB/SmolVLM-256M-Instruct")
        for r in derive_hub.requests
    )
    cache = Path(derive_env["PROVISION_METADATA_CACHE"])
    for path in cache.rglob("*"):
        assert "s3cret" not in str(path)
        if path.is_file():
            assert b"s3cret" not in path.read_bytes(), path


def test_a_password_in_the_source_url_is_sent_as_basic_auth(derive_env, derive_hub, monkeypatch):
    # The local hub ignores Basic auth, so a proxy in front of it records what arrives.
    import base64
    import http.server
    import threading
    import urllib.request

    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            with urllib.request.urlopen(derive_hub.url + self.path) as answer:
                body = answer.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from provision.derive.fetch import hub_repo

        url = f"http://alice:s3cret-pass@127.0.0.1:{server.server_port}"
        repo = hub_repo("HuggingFaceTB/SmolVLM-256M-Instruct", "main", url)
        assert "s3cret" not in repo.where
        assert "config.json" in repo.list_files()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["Basic " + base64.b64encode(b"alice:s3cret-pass").decode()]


def test_a_source_that_does_not_answer_hands_over_to_the_next(derive_env, derive_hub, monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT")
    monkeypatch.setenv("PROVISION_SOURCES", f"http://127.0.0.1:9,{derive_hub.url}")
    profile = load_profile("HuggingFaceTB/SmolVLM-256M-Instruct@main")
    assert profile.derived["source"] == derive_hub.url
