"""The smoke inference, run by the TARGET environment's own Python.

    <env>/bin/python runner.py --request request.json --out result.json

It imports nothing from provision or provision's dependencies: only the standard library and what
the environment under test has (torch, transformers, PIL, huggingface_hub; lmdeploy or vllm for
those backends). The model is loaded by repo id from the Hugging Face cache (HF_HOME, with
HF_HUB_OFFLINE=1 set before any import) or from a local snapshot folder.

Request (JSON): repo_id, revision (commit or null), path (a local snapshot, instead of the cache),
prompt, max_new_tokens, image (a file), backend ("transformers" | "lmdeploy" | "vllm"; the serving
stacks are used only when a GPU is present), device ("auto" | "cpu" | "cuda" | "cuda:N"),
model_class (optional transformers Auto class), trust_remote_code, modes (["greedy",
"group_beam"]).

Result (JSON, schema 1), written to --out whatever happens; see provision/smoke/run.py for the
fields. Errors are reported, never raised: the model's own error text is what the user needs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

# Run as a script, this file's folder is sys.path[0]: drop it, so nothing of provision's can
# shadow the environment's own modules.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

SCHEMA = 1
GROUP_BEAM = {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0}
GROUP_BEAM_MAX_TOKENS = 16  # enough to reach the crash (first step) and show a sequence
AUTO_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM")


class StageError(Exception):
    """An exception from a named stage (load, inputs, generate), carried to the report."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.stage = stage
        self.exc = exc


def error_report(stage: str, exc: BaseException) -> dict:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {
        "stage": stage,
        "type": type(exc).__name__,
        "message": str(exc).strip()[:4000],
        "traceback_tail": "".join(tb)[-3000:],
    }


def version_tuple(text: str) -> tuple:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits or 0))
    return tuple(parts)


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# --- memory ------------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class Memory:
    """CUDA peak allocated on a GPU (torch's allocator), peak RSS on a CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.kind = "cuda_peak_allocated" if self.cuda else "peak_rss"

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
        return peak_rss_bytes()


class DeviceMemory:
    """For serving stacks with their own allocators (TurboMind, vLLM's engine process): the rise
    in memory used on the device while the stack ran, as the driver sees it."""

    kind = "cuda_device_used"

    def __init__(self, device: str) -> None:
        import torch

        self.index = torch.device(device).index or 0
        self.base = self._used()
        self.high = 0

    def _used(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info(self.index)
        return int(total - free)

    def reset(self) -> None:
        pass

    def peak(self) -> int:
        self.high = max(self.high, self._used() - self.base)
        return self.high


# --- device ------------------------------------------------------------------------------------


def resolve_device(requested: str) -> tuple[str, str]:
    """(device, description): "auto" means the first GPU torch sees, else the CPU."""
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {requested!r} was asked for, but this torch ({torch.__version__}) sees "
                "no CUDA GPU"
            )
        device = requested if ":" in requested else "cuda:0"
        index = int(device.split(":")[1])
        return device, f"{device} ({torch.cuda.get_device_name(index)})"
    return "cpu", f"cpu ({platform.processor() or platform.machine()})"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# --- backends ----------------------------------------------------------------------------------


def choose_backend(requested: str, device: str) -> tuple[str, str]:
    """The serving stacks run only on a GPU; everything else uses transformers."""
    if requested in ("lmdeploy", "vllm"):
        if device.startswith("cuda"):
            return requested, f"the profile's serving stack ({requested}) on {device}"
        return "transformers", f"{requested} needs a GPU; none here, so transformers on the CPU"
    return "transformers", "transformers (the default backend)"


def local_snapshot(request: dict) -> str:
    """The snapshot folder for the request, from the offline cache (serving stacks want a path)."""
    if request.get("path"):
        return request["path"]
    from huggingface_hub import snapshot_download

    return snapshot_download(
        request["repo_id"], revision=request.get("revision"), local_files_only=True
    )


SMOKE_CONTEXT = 8192  # tokens: the image, the question and the answer, with room to spare


def max_context(path: str) -> int:
    """SMOKE_CONTEXT, or less where the model's own limit is lower (serving stacks refuse more)."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return SMOKE_CONTEXT
    limits = [
        table.get("max_position_embeddings")
        for table in (config, config.get("text_config") or {}, config.get("llm_config") or {})
    ]
    known = [int(n) for n in limits if isinstance(n, int) and n > 0]
    return min([SMOKE_CONTEXT, *known])


def load_image(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


class Backend:
    """What every stack's backend is given: the request, the device and the memory meter."""

    name = ""

    def __init__(self, request: dict, device: str, memory: Memory | DeviceMemory) -> None:
        self.request = request
        self.device = device
        self.memory = memory


class ServingBackend(Backend):
    """Serving stacks take the prompt and the image as they are and template them themselves."""

    def inputs(self, prompt: str, image) -> dict:
        return {"prompt": prompt, "image": image}


class TransformersBackend(Backend):
    name = "transformers"

    def load(self, report: dict) -> None:
        import torch
        import transformers

        source = self.request.get("path") or self.request["repo_id"]
        common = {"trust_remote_code": bool(self.request.get("trust_remote_code"))}
        if not self.request.get("path") and self.request.get("revision"):
            common["revision"] = self.request["revision"]
        self.processor = transformers.AutoProcessor.from_pretrained(source, **common)
        # transformers 4.56 renamed torch_dtype to dtype; "auto" keeps the checkpoint's dtype.
        dtype_key = "dtype" if version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"
        kwargs = dict(common, **{dtype_key: "auto"})
        if self.device.startswith("cuda") and package_version("accelerate"):
            kwargs["device_map"] = {"": self.device}  # straight onto the GPU, not via host RAM
        self.model = None
        errors = []
        for name in self.model_classes():
            auto = getattr(transformers, name, None)
            if auto is None:
                continue
            try:
                self.model = auto.from_pretrained(source, **kwargs)
                break
            except ValueError as exc:
                # "Unrecognized configuration class ...": this Auto class does not cover the
                # architecture; the next one may. Anything else is the model's own failure.
                if "Unrecognized configuration class" not in str(exc):
                    raise
                errors.append(f"{name}: {exc}")
        if self.model is None:
            raise RuntimeError("no Auto class loads this model: " + " | ".join(errors))
        if "device_map" not in kwargs:
            self.model.to(self.device)
        self.model.eval()
        report["model_class"] = type(self.model).__name__
        report["dtype"] = str(self.model.dtype).replace("torch.", "")
        report["param_bytes"] = int(
            sum(p.numel() * p.element_size() for p in self.model.parameters())
        )
        self.torch = torch

    def model_classes(self) -> list[str]:
        wanted = self.request.get("model_class")
        return [wanted] if wanted else list(AUTO_CLASSES)

    def inputs(self, prompt: str, image) -> dict:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        templater = self.processor
        if not getattr(self.processor, "chat_template", None):
            tokenizer = getattr(self.processor, "tokenizer", None)
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise RuntimeError(
                    "neither the processor nor the tokenizer has a chat template, so the image "
                    "and question cannot be put into the model's prompt format"
                )
            templater = tokenizer
        text = templater.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        batch = self.processor(text=[text], images=[image], return_tensors="pt")
        dtype = self.model.dtype
        out = {}
        for key, value in batch.items():
            if hasattr(value, "to"):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(dtype)  # pixel values in the model's dtype (bf16 path)
            out[key] = value
        return out

    def generate(self, inputs: dict, mode: str, max_new_tokens: int) -> dict:
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False}
        if mode == "group_beam":
            kwargs.update(GROUP_BEAM)
            kwargs.update(output_scores=True, return_dict_in_generate=True)
            kwargs["max_new_tokens"] = min(max_new_tokens, GROUP_BEAM_MAX_TOKENS)
        else:
            kwargs["num_beams"] = 1
        prompt_len = inputs["input_ids"].shape[1]
        with self.torch.inference_mode():
            sync(self.device)
            start = time.perf_counter()
            out = self.model.generate(**inputs, **kwargs)
            sync(self.device)
            latency = time.perf_counter() - start
        sequences = out.sequences if hasattr(out, "sequences") else out
        new = sequences[0, prompt_len:]
        decoder = getattr(self.processor, "tokenizer", None) or self.processor
        result = {
            "answer": decoder.batch_decode(new[None], skip_special_tokens=True)[0].strip(),
            "new_tokens": int(new.shape[0]),
            "token_ids": [int(t) for t in new.tolist()],
            "latency_s": latency,
        }
        if mode == "group_beam" and getattr(out, "scores", None):
            result["scores_dtype"] = str(out.scores[0].dtype).replace("torch.", "")
        return result

    def group_beam_support(self) -> tuple[bool, str]:
        """Group (diverse) beam search is in core transformers up to 4.56 only."""
        import transformers
        from transformers.generation.utils import GenerationMixin

        if hasattr(GenerationMixin, "_group_beam_search"):
            return True, ""
        return False, (
            f"transformers {transformers.__version__} has no group beam search in the core "
            "library (it moved to the hub repo transformers-community/group-beam-search in "
            "4.57), so the bf16 output_scores path cannot crash here"
        )


class LMDeployBackend(ServingBackend):
    name = "lmdeploy"

    def load(self, report: dict) -> None:
        import lmdeploy

        path = local_snapshot(self.request)
        # TurboMind where it supports the architecture, else lmdeploy's PyTorch engine: the
        # choice lmdeploy itself makes when given no config.
        engine = "turbomind"
        try:
            from lmdeploy.archs import autoget_backend

            engine = autoget_backend(path)
        except ImportError:
            pass
        config_class = (
            lmdeploy.TurbomindEngineConfig
            if engine == "turbomind"
            else lmdeploy.PytorchEngineConfig
        )
        # lmdeploy's own memory defaults (what serving will take, and what `provision check`
        # assumes); only the context is capped, so no KV is reserved for a 128k session.
        config = config_class(session_len=max_context(path))
        self.pipe = lmdeploy.pipeline(path, backend_config=config)
        report["model_class"] = f"lmdeploy pipeline ({engine})"
        report["dtype"] = getattr(config, "dtype", "auto")

    def generate(self, inputs: dict, mode: str, max_new_tokens: int) -> dict:
        from lmdeploy import GenerationConfig

        # top_k=1 is greedy in every lmdeploy; do_sample exists only in newer ones.
        wanted = {"max_new_tokens": max_new_tokens, "top_k": 1, "do_sample": False}
        known = getattr(GenerationConfig, "__dataclass_fields__", wanted)
        config = GenerationConfig(**{k: v for k, v in wanted.items() if k in known})
        start = time.perf_counter()
        response = self.pipe((inputs["prompt"], inputs["image"]), gen_config=config)
        latency = time.perf_counter() - start
        ids = list(getattr(response, "token_ids", None) or [])
        return {
            "answer": response.text.strip(),
            "new_tokens": int(getattr(response, "generate_token_len", 0) or len(ids)),
            "token_ids": [int(t) for t in ids],
            "latency_s": latency,
        }

    def group_beam_support(self) -> tuple[bool, str]:
        return False, "lmdeploy serves greedy/sampled decoding; group beam search is transformers'"


class VLLMBackend(ServingBackend):
    name = "vllm"

    def load(self, report: dict) -> None:
        from vllm import LLM

        path = local_snapshot(self.request)
        self.llm = LLM(
            model=path,
            trust_remote_code=bool(self.request.get("trust_remote_code")),
            # vLLM's default gpu_memory_utilization (0.9, what `provision check` assumes); the
            # context is capped so the KV cache need not hold the model's longest one.
            max_model_len=max_context(path),
            limit_mm_per_prompt={"image": 1},
            enforce_eager=True,  # no CUDA-graph capture: a smoke wants a quick start
        )
        report["model_class"] = "vllm LLM"
        model_config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        report["dtype"] = str(getattr(model_config, "dtype", "auto")).replace("torch.", "")

    def generate(self, inputs: dict, mode: str, max_new_tokens: int) -> dict:
        import base64
        import io

        from vllm import SamplingParams

        buffer = io.BytesIO()
        inputs["image"].save(buffer, format="JPEG")
        url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": inputs["prompt"]},
                ],
            }
        ]
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        start = time.perf_counter()
        outputs = self.llm.chat(messages, sampling_params=params, use_tqdm=False)
        latency = time.perf_counter() - start
        completion = outputs[0].outputs[0]
        ids = [int(t) for t in completion.token_ids]
        return {
            "answer": completion.text.strip(),
            "new_tokens": len(ids),
            "token_ids": ids,
            "latency_s": latency,
        }

    def group_beam_support(self) -> tuple[bool, str]:
        return False, "vLLM has no diverse (group) beam search; that path is transformers'"


BACKENDS = {"transformers": TransformersBackend, "lmdeploy": LMDeployBackend, "vllm": VLLMBackend}


# --- the run -----------------------------------------------------------------------------------


def read_rows(spec: dict, limit: int) -> list:
    """The first `limit` records of the dataset files, in order: JSON lines with the standard
    library, parquet with pyarrow (what `datasets` itself reads parquet with)."""
    rows: list = []
    for path in spec["files"]:
        if len(rows) >= limit:
            break
        if spec.get("format") == "parquet" or path.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq
            except ImportError as exc:
                raise RuntimeError(
                    "reading parquet needs pyarrow in this environment (datasets installs it): "
                    "add `pyarrow` or `datasets` to the profile's or direction's packages"
                ) from exc
            table = pq.ParquetFile(path)
            for batch in table.iter_batches(batch_size=max(1, min(64, limit))):
                for row in batch.to_pylist():
                    rows.append((path, row))
                    if len(rows) >= limit:
                        break
                if len(rows) >= limit:
                    break
        else:
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):  # the items read it by column name
                            raise ValueError(
                                f"{os.path.basename(path)} line {number} is a JSON "
                                f"{type(row).__name__}, not a record with named columns"
                            )
                        rows.append((path, row))
                        if len(rows) >= limit:
                            break
    return rows[:limit]


def row_image(value, data_file: str, base: str):
    """An image column as the hubs store it: {"bytes": ..., "path": ...} (datasets' Image
    feature in parquet), a path relative to the repository (or to the data file), or bytes."""
    import io

    from PIL import Image

    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") else value.get("path")
    if isinstance(value, (bytes, bytearray)):
        with Image.open(io.BytesIO(value)) as img:
            return img.convert("RGB")
    if isinstance(value, str) and value:
        root = os.path.normpath(os.path.abspath(base))
        for folder in (base, os.path.dirname(data_file)):
            # Only names inside the dataset's own snapshot (its files are links into the cache's
            # blobs, so the name is checked, not where it resolves): `..` cannot leave it.
            candidate = os.path.normpath(os.path.abspath(os.path.join(folder, value)))
            if candidate.startswith(root + os.sep) and os.path.isfile(candidate):
                return load_image(candidate)
        raise FileNotFoundError(f"image {value!r} is not a file in the dataset")
    raise ValueError(f"no image in this record (the image column holds {type(value).__name__})")


def answer_list(value) -> list:
    """The reference answers as strings: OK-VQA has a list of ten, others one string."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v if not isinstance(v, dict) else v.get("answer", v)) for v in value]
    return [str(value)]


def run_dataset(request: dict) -> dict:
    """Load the model once, then answer the first N records of a dataset with greedy decoding;
    each item's answer (or its error) is reported, the scoring is provision's."""
    spec = request["dataset"]
    report = run({**request, "modes": []})  # imports, device, load: the single smoke's stages
    report["items"] = []
    if report.get("error"):
        return report
    backend = report.pop("_backend")
    max_new_tokens = int(request.get("max_new_tokens") or 32)

    def answer(question: str, image) -> tuple[str, float]:
        out = backend.generate(backend.inputs(question, image), "greedy", max_new_tokens)
        return out["answer"], out["latency_s"]

    return _answer_items(report, spec, answer)


def _answer_items(report: dict, spec: dict, answer) -> dict:
    """The first N records of the dataset, each answered by `answer(question, image)` ->
    (prediction, latency in s), into report["items"]; one item's failure is that item's result,
    an unreadable dataset the report's. Both ways of running (in-process, served) go through
    here, so their items read alike and provision scores them with the same code."""
    try:
        rows = read_rows(spec, int(spec.get("n") or 20))
    except Exception as exc:  # noqa: BLE001 - an unreadable dataset is the result
        report["error"] = error_report("dataset", exc)
        report["ok"] = False
        return report
    for index, (data_file, row) in enumerate(rows):
        item = {
            "index": index,
            "id": str(row.get(spec.get("id") or "question_id", index)),
            "question": str(row.get(spec["question"], "")),
            "answers": answer_list(row.get(spec["answers"])),
            "prediction": None,
        }
        try:
            image = row_image(row.get(spec["image"]), data_file, spec["base"])
            item["prediction"], latency = answer(item["question"], image)
            item["latency_s"] = round(latency, 4)
        except Exception as exc:  # noqa: BLE001 - one item's failure is that item's result
            item["error"] = error_report("item", exc)
        report["items"].append(item)
    report["ok"] = bool(report["items"]) and all("error" not in i for i in report["items"])
    return report


def run_served_dataset(request: dict) -> dict:
    """The first N records of a dataset through a running OpenAI-compatible server (provision
    serve): one chat request per item, the image as a PNG data: URI, greedy (temperature 0).
    Nothing is loaded here; the items are reported as run_dataset reports them, so provision
    scores and records both ways with the same code."""
    import base64
    import io
    import urllib.error
    import urllib.request

    spec = request["dataset"]
    served = request["served"]
    url = served["base_url"].rstrip("/") + "/chat/completions"
    report: dict = {
        "schema": SCHEMA,
        "ok": False,
        "repo_id": request.get("repo_id"),
        "backend": served.get("stack"),
        "device": None,
        "error": None,
        "items": [],
        "versions": {"python": platform.python_version()},
    }
    # The environment's packages, as the in-process smoke reports them (read, not imported).
    for name in ("torch", "transformers", "tokenizers", "huggingface_hub", "lmdeploy", "vllm"):
        found = package_version(name)
        if found:
            report["versions"][name] = found
    max_new_tokens = int(request.get("max_new_tokens") or 32)
    # The server is local: a proxy from the environment must not carry the requests away.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def answer(question: str, image) -> tuple[str, float]:
        png = io.BytesIO()
        image.save(png, format="PNG")  # lossless: the server sees the pixels read here
        uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
        body = {
            "model": served["model"],
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": uri}},
                        {"type": "text", "text": question},
                    ],
                }
            ],
        }
        call = urllib.request.Request(
            url, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        start = time.perf_counter()
        try:
            with opener.open(call, timeout=float(served.get("timeout") or 600)) as response:
                said = chat_answer(json.loads(response.read(4 * 1024 * 1024)))
        except urllib.error.HTTPError as exc:  # the server's own reason, not just the code
            reason = exc.read(2000).decode("utf-8", "replace")
            raise RuntimeError(f"the server answered {exc.code}: {reason}") from None
        return said, time.perf_counter() - start

    return _answer_items(report, spec, answer)


def chat_answer(body) -> str:
    """choices[0].message.content of a chat completion, checked: it is another process's JSON."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"not a chat completion: {str(body)[:200]}") from exc
    if not isinstance(content, str):
        raise ValueError(f"the answer is {type(content).__name__}, not text")
    return content


def run(request: dict) -> dict:
    report: dict = {
        "schema": SCHEMA,
        "ok": False,
        "repo_id": request.get("repo_id"),
        "revision": request.get("revision"),
        "backend": None,
        "backend_reason": None,
        "device": None,
        "device_name": None,
        "model_class": None,
        "dtype": None,
        "param_bytes": None,
        "import_seconds": None,
        "load_seconds": None,
        "answer": None,
        "latency_s": None,
        "tokens_per_s": None,
        "peak_memory_bytes": None,
        "peak_memory_kind": None,
        "modes": {},
        "error": None,
        "versions": {"python": platform.python_version()},
    }
    stage = "import"
    try:
        start = time.perf_counter()
        import torch

        if (
            request.get("backend") or "transformers"
        ) == "transformers" or not torch.cuda.is_available():
            import transformers  # noqa: F401 - timed here, so load_seconds is the load alone
        report["import_seconds"] = round(time.perf_counter() - start, 3)
        report["versions"]["torch"] = torch.__version__
        for name in ("transformers", "tokenizers", "huggingface_hub", "lmdeploy", "vllm"):
            found = package_version(name)
            if found:
                report["versions"][name] = found
        stage = "device"
        device, description = resolve_device(request.get("device") or "auto")
        report["device"], report["device_name"] = device, description
        backend_name, reason = choose_backend(request.get("backend") or "transformers", device)
        report["backend"], report["backend_reason"] = backend_name, reason
        memory = DeviceMemory(device) if backend_name != "transformers" else Memory(device)
        report["peak_memory_kind"] = memory.kind
        backend = BACKENDS[backend_name](request, device, memory)

        stage = "load"
        memory.reset()
        start = time.perf_counter()
        backend.load(report)
        report["load_seconds"] = round(time.perf_counter() - start, 3)

        if "dataset" in request:
            report["_backend"] = backend  # run_dataset goes on with the loaded model
            report["ok"] = True
            return report
        stage = "inputs"
        image = load_image(request["image"])
        inputs = backend.inputs(request["prompt"], image)
        load_peak = memory.peak()  # weights and inputs in place
    except Exception as exc:  # noqa: BLE001 - every failure becomes the report
        report["error"] = error_report(stage, exc)
        report["peak_memory_bytes"] = peak_rss_bytes()
        return report

    max_new_tokens = int(request.get("max_new_tokens") or 32)
    peaks = [load_peak]
    for mode in request.get("modes") or ["greedy", "group_beam"]:
        outcome = run_mode(backend, memory, inputs, mode, max_new_tokens)
        report["modes"][mode] = outcome
        peaks.append(outcome.get("peak_memory_bytes") or 0)
    # Each mode resets the CUDA peak counter before it runs: the run's peak is the largest.
    report["peak_memory_bytes"] = max(peaks)

    greedy = report["modes"].get("greedy", {})
    if greedy.get("status") == "ok":
        report["answer"] = greedy["answer"]
        report["latency_s"] = greedy["latency_s"]
        report["tokens_per_s"] = greedy["tokens_per_s"]
    report["ok"] = all(m["status"] in ("ok", "not_applicable") for m in report["modes"].values())
    return report


def run_mode(backend, memory, inputs: dict, mode: str, max_new_tokens: int) -> dict:
    if mode == "group_beam":
        supported, reason = backend.group_beam_support()
        if not supported:
            return {"status": "not_applicable", "reason": reason}
    elif mode != "greedy":
        return {
            "status": "failed",
            "error": {
                "stage": "mode",
                "type": "ValueError",
                "message": f"unknown decoding mode {mode!r}",
            },
        }
    settings = {"max_new_tokens": max_new_tokens}
    if mode == "group_beam":
        settings.update(GROUP_BEAM, output_scores=True)
        settings["max_new_tokens"] = min(max_new_tokens, GROUP_BEAM_MAX_TOKENS)
    memory.reset()
    try:
        out = backend.generate(inputs, mode, max_new_tokens)
    except Exception as exc:  # noqa: BLE001 - the model's own error is the result
        return {
            "status": "failed",
            "settings": settings,
            "error": error_report("generate", exc),
            "peak_memory_bytes": memory.peak(),
        }
    latency = out["latency_s"]
    out.update(
        status="ok",
        settings=settings,
        latency_s=round(latency, 4),
        tokens_per_s=round(out["new_tokens"] / latency, 2) if latency > 0 else None,
        peak_memory_bytes=memory.peak(),
    )
    if not out["answer"]:
        out["status"] = "failed"
        out["error"] = {
            "stage": "generate",
            "type": "EmptyAnswer",
            "message": f"the model generated {out['new_tokens']} tokens that decode to nothing",
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="provision smoke inference (target env side)")
    parser.add_argument("--request", required=True, help="request JSON file")
    parser.add_argument("--out", required=True, help="where the result JSON goes")
    args = parser.parse_args(argv)
    with open(args.request, encoding="utf-8") as handle:
        request = json.load(handle)
    # Read at import time by huggingface_hub and transformers: set before either is imported.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    if "served" in request:
        report = run_served_dataset(request)
    else:
        report = run_dataset(request) if "dataset" in request else run(request)
    report["wall_seconds"] = round(time.perf_counter() - started, 3)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
