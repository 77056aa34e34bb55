"""`provision check --nodes`: ZeRO over every GPU of every node, tensor parallel inside a node,
data-parallel replicas, and node counts among the suggestions."""

from __future__ import annotations

from tests.cli_helpers import invoke, invoke_json


def per_gpu(report: dict) -> float:
    return report["fit"]["estimate"]["per_gpu_gib"]


def test_training_shards_over_all_nodes_gpus():
    rc, two = invoke_json("check", "qwen2.5-vl-7b", "--task", "full", "--zero", "3",
                       "--nodes", "2", "--gpu", "A100-80GB x8")  # fmt: skip
    assert rc == 0, two
    assert two["cluster"] == {
        "nodes": 2, "gpus_per_node": 8, "total_gpus": 16, "data_parallel": 16,
        "tensor_parallel": 1, "zero_shards": 16, "notes": two["cluster"]["notes"],
    }  # fmt: skip
    # The same as one machine with all 16 GPUs: ZeRO-3 does not care where they sit.
    _, flat = invoke_json("check", "qwen2.5-vl-7b", "--task", "full", "--zero", "3",
                       "--gpu", "A100-80GB x16")  # fmt: skip
    assert per_gpu(two) == per_gpu(flat)
    _, one = invoke_json("check", "qwen2.5-vl-7b", "--task", "full", "--zero", "3",
                      "--nodes", "1", "--gpu", "A100-80GB x8")  # fmt: skip
    assert per_gpu(two) < per_gpu(one)


def test_inference_is_tensor_parallel_inside_a_node():
    _, four = invoke_json("check", "qwen2.5-vl-7b", "--nodes", "4", "--gpu", "L4 x2")
    _, node = invoke_json("check", "qwen2.5-vl-7b", "--gpu", "L4 x2")
    plan = four["cluster"]
    assert (plan["data_parallel"], plan["tensor_parallel"], plan["zero_shards"]) == (4, 2, 1)
    assert per_gpu(four) == per_gpu(node)  # more nodes: more replicas, same memory per GPU
    assert "not memory per GPU" in plan["notes"][0]


def test_suggestions_name_a_node_count_that_fits():
    rc, report = invoke_json("check", "qwen2.5-vl-7b", "--task", "full", "--zero", "3",
                          "--nodes", "1", "--gpu", "RTX 4090 x2")  # fmt: skip
    assert rc == 1 and report["fit"]["verdict"] == "does not fit"
    first = report["fit"]["suggestions"][0]
    assert first["kind"] == "nodes" and first["text"].startswith("use ")
    n = first["change"]["nodes"]
    rc, fits = invoke_json("check", "qwen2.5-vl-7b", "--task", "full", "--zero", "3",
                        "--nodes", str(n), "--gpu", "RTX 4090 x2")  # fmt: skip
    assert rc == 0 and fits["fit"]["verdict"] == "fits"
    rc, short = invoke_json("check", "qwen2.5-vl-7b", "--task", "full", "--zero", "3",
                         "--nodes", str(n - 1), "--gpu", "RTX 4090 x2")  # fmt: skip
    assert short["fit"]["verdict"] != "fits"  # the smallest count, not just one that fits


def test_nodes_needs_a_planned_node():
    proc = invoke("check", "qwen2.5-vl-7b", "--nodes", "2")
    assert proc.returncode == 2 and "describe one node's GPUs with --gpu" in proc.stderr
    proc = invoke("check", "qwen2.5-vl-7b", "--nodes", "0", "--gpu", "L4")
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr
    assert "Traceback" not in proc.stderr
