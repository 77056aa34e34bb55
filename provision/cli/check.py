"""`provision check PROFILE`: does the model fit this machine (or a planned one) for a task?"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from provision.choices import Attention, Task, TrainVision, value
from provision.cli.options import (
    AttentionOpt,
    BatchOpt,
    CacheMaxEntryOpt,
    CpuOffloadOpt,
    DriverOpt,
    DtypeOpt,
    EmitOpt,
    EnforceEagerOpt,
    FramesOpt,
    GpuMemOpt,
    GpuOpt,
    GpusOpt,
    JsonFlag,
    LaunchDatasetOpt,
    LimitMmOpt,
    LoraRankOpt,
    MaxBatchedTokensOpt,
    MaxNumSeqsOpt,
    MaxPixelsOpt,
    MaxTilesOpt,
    OfflineOpt,
    ProfilesDir,
    QuantOpt,
    SeqOpt,
    StackOpt,
    TaskOpt,
    TrainVisionOpt,
    VisionCheckpointingOpt,
    parse_limit_mm,
)
from provision.cli.output import emit_result
from provision.cli.shared import apply_offline, planned_machine
from provision.errors import CheckFailed


def check(
    profile: Annotated[
        str,
        typer.Argument(
            help="Profile name (qwen2.5-vl-7b), hub repo id (org/name[@rev]) or model folder."
        ),
    ],
    task: TaskOpt = Task.infer,
    quant: QuantOpt = None,
    batch: BatchOpt = 1,
    seq: SeqOpt = None,
    images: Annotated[int, typer.Option(help="Images per sample.")] = 1,
    image_tokens: Annotated[
        int | None, typer.Option(help="Tokens per image (default: the profile's resolution).")
    ] = None,
    max_pixels: MaxPixelsOpt = None,
    max_tiles: MaxTilesOpt = None,
    frames: FramesOpt = None,
    context: Annotated[
        int | None,
        typer.Option(help="Serving engines: tokens of KV cache reserved (default: model context)."),
    ] = None,
    stack: StackOpt = None,
    zero: Annotated[int | None, typer.Option(help="DeepSpeed ZeRO stage for tuning.")] = None,
    lora_rank: LoraRankOpt = None,
    dtype: DtypeOpt = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing")
    ] = True,
    vision_checkpointing: VisionCheckpointingOpt = None,
    train_vision: TrainVisionOpt = TrainVision.frozen,
    cpu_offload: CpuOffloadOpt = False,
    attention: AttentionOpt = Attention.sdpa,
    memory_fraction: Annotated[
        float | None,
        typer.Option(help="Share of GPU memory the stack may use (vLLM --gpu-memory-utilization)."),
    ] = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    enforce_eager: EnforceEagerOpt = False,
    max_batched_tokens: MaxBatchedTokensOpt = None,
    limit_mm: LimitMmOpt = None,
    cache_max_entry_count: CacheMaxEntryOpt = None,
    emit_launch: EmitOpt = False,
    dataset: LaunchDatasetOpt = None,
    gpu: GpuOpt = None,
    gpu_mem: GpuMemOpt = None,
    gpus: GpusOpt = None,
    driver: DriverOpt = None,
    nodes: Annotated[
        int | None,
        typer.Option(help="Plan a cluster of this many nodes, each as --gpu describes."),
    ] = None,
    profiles_dir: ProfilesDir = None,
    offline: OfflineOpt = False,
    json_output: JsonFlag = False,
) -> None:
    """Check GPUs, memory and disk against what PROFILE needs; exit 1 if it does not fit."""
    from provision.check import run_check
    from provision.fit import FitRequest

    apply_offline(offline)
    limit_images, limit_videos = parse_limit_mm(limit_mm)
    request = FitRequest(
        task=task.value,
        quant=value(quant),
        batch=batch,
        seq=seq,
        images=images,
        image_tokens=image_tokens,
        gradient_checkpointing=gradient_checkpointing,
        vision_gradient_checkpointing=vision_checkpointing,
        train_vision=train_vision.value,
        cpu_offload=cpu_offload,
        stack=value(stack),
        zero=zero,
        lora_rank=lora_rank,
        dtype=dtype,
        context=context,
        attention=attention.value,
        memory_fraction=memory_fraction,
        max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager,
        max_batched_tokens=max_batched_tokens,
        limit_images=limit_images,
        limit_videos=limit_videos,
        cache_max_entry_count=cache_max_entry_count,
        max_pixels=max_pixels,
        max_tiles=max_tiles,
        frames=frames,
    )
    machine = planned_machine(gpu, gpu_mem, gpus, driver)
    if nodes is not None:
        from provision.cluster.plan import check_nodes

        report = check_nodes(profile, request, machine, nodes, profiles_dir)
    else:
        report = run_check(
            profile, request, machine, profiles_dir, emit=emit_launch, dataset=dataset
        )
    error = None if report.ok else CheckFailed(_not_ok(report))
    emit_result(report, lambda con: render(con, report), json_output, error, plain=True)


def _not_ok(report: Any) -> str:
    """Why a check fails, in one line (the result has the numbers and the suggestions)."""
    where = report.machine.describe()
    if not report.fit.fits:
        return f"{report.profile.name} {report.fit.verdict} on {where}."
    return f"Not enough disk for {report.profile.name}'s weights on {where}."


_STYLE = {"fits": "bold green", "tight": "bold yellow", "does not fit": "bold red"}


def render(con: Any, report: Any) -> None:
    """The report for people, through provision.cli.plain (check does not import rich)."""
    from provision.cli.plain import Table
    from provision.memory import media_text

    fit, machine, profile = report.fit, report.machine, report.profile
    est, req = fit.estimate, fit.request
    where = "planned" if machine.planned else f"this machine, read through {machine.source}"
    if not machine.planned and machine.source == "none":
        where = "this machine; NVML, nvidia-smi and /proc found no NVIDIA driver"
    con.print(f"[bold]{profile.title}[/] — {req.task}, {req.quant}, stack {req.stack}")
    driver = (
        f", driver {machine.driver_version} (CUDA {machine.cuda_version})"
        if machine.driver_version
        else ""
    )
    derived = profile.derived
    if derived:
        con.print(f"Profile {profile.origin}")
        for line in derived.get("approximate", []):
            con.print(f"  [yellow]approximate:[/] {line}")
        for line in derived.get("notes", []):
            con.print(f"  note: {line}")
    plan = getattr(report, "cluster", None)
    if plan is not None:
        con.print(
            f"Cluster (planned): {plan.nodes} node(s) x {plan.gpus_per_node} GPU(s): "
            f"{plan.data_parallel} data-parallel replica(s), tensor parallel {plan.tensor_parallel}"
            f" inside a node, ZeRO shards over {plan.zero_shards} GPU(s)"
        )
        for note in plan.notes:
            con.print(f"  {note}")
    con.print(f"Machine ({where}): {machine.describe()}{driver}")
    for gpu in machine.gpus[:1]:
        if gpu.compute_capability:
            con.print(
                f"  compute capability {gpu.cc_text}: bf16 {'yes' if gpu.bf16 else 'no'}, "
                f"FlashAttention-2 {'yes' if gpu.flash_attn2 else 'no'}"
            )
    images = media_text(req)
    shape = f"batch {req.batch}, {req.seq} tokens per sample, {images}"
    con.print(f"Requirement: {shape}; {est.strategy}")
    table = Table(["per GPU", "GiB", ""], right=[1])
    for comp in est.components:
        table.add_row(comp.name, f"{comp.bytes / 1024**3:.2f}", comp.detail)
    table.add_row("[bold]total[/]", f"[bold]{est.per_gpu / 1024**3:.2f}[/]", "")
    con.print(table)
    style = _STYLE[fit.verdict]
    con.print(f"Verdict: [{style}]{fit.verdict}[/] — {fit.reason}")
    for note in fit.notes + machine.notes:
        con.print(f"  note: {note}")
    if fit.suggestions:
        con.print("What would make it fit:")
        for i, s in enumerate(fit.suggestions, 1):
            need = "" if s.need is None else f"  (needs {s.need / 1024**3:.1f} GiB per GPU)"
            con.print(f"  {i}. {s.text}{need}")
    disk = report.disk
    if disk.data_dir is not None:
        state = "[green]enough room[/]" if disk.enough else "[red]not enough room[/]"
        con.print(
            f"Data disk: {disk.note}: {disk.data_dir.free / 1024**3:.1f} GiB free, weights need "
            f"{disk.need / 1024**3:.1f} GiB — {state}"
            + (" (this machine; the plan does not depend on it)" if machine.planned else "")
        )
    else:
        con.print(f"Data disk: [red]{disk.note}[/]")
    if report.launch is not None:
        applies = f" (with {report.launch_note})" if report.launch_note else ""
        con.print(
            f"Launch{applies}, flags as of {report.launch.stack} {report.launch.version}:",
            markup=False,
        )
        con.print(report.launch.line, markup=False)
        notes = [report.launch.dataset_note] if report.launch.dataset_note else []
        for note in notes + report.launch.notes:
            con.print(f"  note: {note}", markup=False)
        if report.launch.placeholders:
            con.print(
                f"  It does not run as printed: {', '.join(report.launch.placeholders)} is a "
                "placeholder (see the notes).",
                markup=False,
            )


def register(app: typer.Typer) -> None:
    app.command(
        "check",
        help="Does a model fit this machine or a planned one? Says what to change if not.",
    )(check)
