"""`provision check --nodes N --gpu "A100-80GB x8"`: the memory plan over several nodes.

How the work spreads, and so which GPU count the per-GPU estimate divides by:
- training (lora, qlora, full): data parallel, one replica per GPU on every node; DeepSpeed ZeRO
  shards optimizer states (1), gradients (2) and weights (3) over *all* GPUs of all nodes, so the
  estimate is the one for nodes x gpus-per-node GPUs.
- inference: tensor parallelism stays inside a node (its NVLink / PCIe), each node is one replica;
  more nodes add throughput, never memory per GPU, so the estimate is the one for one node.
When it does not fit, the smallest node count that makes it fit (training with ZeRO) comes first
among the suggestions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from provision.errors import ProvisionError
from provision.hardware.machine import Machine

MAX_NODES = 64  # how far a node-count suggestion looks


@dataclass
class ClusterPlan:
    nodes: int
    gpus_per_node: int
    data_parallel: int  # replicas
    tensor_parallel: int  # inside a node
    zero_shards: int  # GPUs ZeRO shards over (1: no sharding)
    notes: list[str] = field(default_factory=list)

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "total_gpus": self.total_gpus,
            "data_parallel": self.data_parallel,
            "tensor_parallel": self.tensor_parallel,
            "zero_shards": self.zero_shards,
            "notes": list(self.notes),
        }


def layout(task: str, zero: int, nodes: int, per_node: int) -> ClusterPlan:
    if task == "infer":
        return ClusterPlan(nodes, per_node, data_parallel=nodes, tensor_parallel=per_node,
                           zero_shards=1)  # fmt: skip
    total = nodes * per_node
    return ClusterPlan(nodes, per_node, data_parallel=total, tensor_parallel=1,
                       zero_shards=total if zero else 1)  # fmt: skip


def check_nodes(
    profile_name: str,
    request: Any,
    node_machine: Machine | None,
    nodes: int,
    profiles_dir: Any = None,
) -> Any:
    """`run_check` for `nodes` nodes of `node_machine` (a planned node: --gpu); the report
    carries the layout in `.cluster` and node-count suggestions first."""
    from provision.check import run_check
    from provision.fit import Suggestion, _fits_on, with_gpu_count
    from provision.memory import resolve_request
    from provision.profiles import load_profile

    if nodes < 1:
        raise ProvisionError(f"--nodes {nodes}: must be at least 1.")
    if node_machine is None or not node_machine.gpus:
        raise ProvisionError(
            "--nodes plans a cluster: describe one node's GPUs with --gpu.",
            'e.g. --nodes 2 --gpu "A100-80GB x8".',
        )
    profile = load_profile(profile_name, profiles_dir)
    resolved = resolve_request(profile, request)
    zero = resolved.zero or 0
    per_node = node_machine.gpu_count

    def machine_for(n: int) -> Machine:
        count = per_node if resolved.task == "infer" else n * per_node
        return with_gpu_count(node_machine, count)

    report = run_check(profile_name, request, machine_for(nodes), profiles_dir)
    plan = layout(resolved.task, zero, nodes, per_node)
    if resolved.task == "infer":
        plan.notes.append(
            f"Inference: tensor parallel over the {per_node} GPU(s) of a node, {nodes} "
            "replica(s); more nodes add throughput, not memory per GPU."
        )
    elif not zero:
        plan.notes.append(
            f"Data parallel without ZeRO: every one of the {plan.total_gpus} GPUs holds a full "
            "replica; --zero 1/2/3 shards the training state over all of them."
        )
    else:
        plan.notes.append(f"ZeRO-{zero} shards over all {plan.total_gpus} GPUs of {nodes} nodes.")
    report.cluster = plan
    fit = report.fit
    if not fit.fits and resolved.task != "infer":
        extra = []
        for stage in ([zero] if zero else []) + [z for z in (2, 3) if z > zero]:
            req = replace(request, zero=stage)
            for n in range(nodes + 1, MAX_NODES + 1):
                # Only the verdict is read: no suggestions are worked out for each count tried.
                ok, need = _fits_on(profile, req, machine_for(n))
                if ok:
                    text = f"use {n} nodes of {per_node} x {node_machine.gpus[0].name}"
                    text += f" with ZeRO-{stage} over {n * per_node} GPUs"
                    extra.append(Suggestion("nodes", text, need, {"nodes": n, "zero": stage}))
                    break
            if extra:
                break
        fit.suggestions[:0] = extra
    return report
