"""transformers group (diverse) beam search: float32 scores copied into a bf16/fp16 buffer.

From 4.45.0, `_group_beam_search` upcasts each group's logits to float32 before the log-softmax
(`.float()`, later `.to(dtype=torch.float32, ...)`), but the buffer that collects the processed
scores for `output_scores=True` is still `torch.zeros_like(outputs.logits[:, -1, :])`, i.e. in the
logits' dtype. With `num_beam_groups > 1`, `output_scores=True` and a bf16/fp16 model, `generate`
stops with `RuntimeError: Index put requires the source and destination dtypes match`.
Reported upstream as huggingface/transformers#41238; the hand fix is a cast at the copy.

Forms, from the released wheels' `transformers/generation/utils.py` (read for every minor release
4.44-4.57; the statement the fix changes is identical in all affected releases, only the upcast
around it changed):
- 4.44.x: no upcast (`next_token_logits = outputs.logits[batch_group_indices, -1, :]`): scores
  stay in the logits' dtype, the copy cannot mismatch -> not affected.
- 4.45.0-4.45.2: `.float()`.
- 4.46.0-4.50.3: `.float()` then `next_token_logits.to(input_ids.device)`.
- 4.51.0-4.56.2: `.to(dtype=torch.float32, device=input_ids.device)`.
- 4.57.0 on: `_group_beam_search` is gone; `generate` loads it from the hub repo
  transformers-community/group-beam-search (with trust_remote_code) -> not applicable.
"""

from __future__ import annotations

from provision.patches.base import Fix, Form

_BUFFER = "processed_score = torch.zeros_like(outputs.logits[:, -1, :])"
_DEVICE_MOVE = "next_token_logits = next_token_logits.to(input_ids.device)"
_FLOAT = "next_token_logits = outputs.logits[batch_group_indices, -1, :].float()"
_TO_FLOAT32 = (
    "next_token_logits = outputs.logits[batch_group_indices, -1, :].to("
    "dtype=torch.float32, device=input_ids.device)"
)
_LOG_SOFTMAX = "next_token_scores = nn.functional.log_softmax("

# The check: a tiny random Llama in bf16, group beam search with output_scores=True, against the
# same weights in float32. Run by the environment's own Python (torch and transformers from there).
CHECK_SCRIPT = r"""
import json, sys
try:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
except Exception as exc:
    print(json.dumps({"ok": False, "error": f"cannot import torch/transformers: {exc}"}))
    sys.exit(0)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
model = LlamaForCausalLM(config).eval()
model = model.to(torch.bfloat16).to(torch.float32)  # the same weights in both runs
ids = torch.tensor([[1, 5, 9, 17, 33, 40]])
kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
              num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=False,
              output_scores=True, return_dict_in_generate=True)
out = {"transformers": transformers.__version__, "torch": torch.__version__}
with torch.no_grad():
    reference = model.generate(ids, **kwargs).sequences.tolist()
    try:
        half = model.to(torch.bfloat16).generate(ids, **kwargs)
    except Exception as exc:
        out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    else:
        out.update(ok=half.sequences.tolist() == reference, bf16=half.sequences.tolist(),
                   float32=reference, scores_dtype=str(half.scores[0].dtype))
print(json.dumps(out))
"""

FIX = Fix(
    id="group-beam-search-dtype",
    package="transformers",
    title="group beam search with output_scores on bf16/fp16 models: dtype mismatch at index put",
    upstream="https://github.com/huggingface/transformers/issues/41238",
    applies=">=4.45.0,<4.57",
    not_applicable=(
        (
            ">=4.57",
            "group beam search left the core library in transformers 4.57 "
            "(it is loaded from the hub repo transformers-community/group-beam-search)",
        ),
        (
            "<4.45",
            "before 4.45 group beam search keeps scores in the logits' dtype (no float32 "
            "upcast), so the copy into the scores buffer cannot mismatch",
        ),
    ),
    file="transformers/generation/utils.py",
    region_start=r"^[ \t]*def _group_beam_search\(",
    region_name="GenerationMixin._group_beam_search",
    forms=(
        Form(
            name="4.45: logits upcast with .float()",
            seen_in="4.45.0, 4.45.1, 4.45.2",
            anchors=(_BUFFER, _FLOAT, _LOG_SOFTMAX),
            absent=(_DEVICE_MOVE,),
        ),
        Form(
            name="4.46-4.50: .float() then .to(input_ids.device)",
            seen_in="4.46.0, 4.46.3, 4.47.0, 4.47.1, 4.48.0, 4.48.3, 4.49.0, 4.50.0, 4.50.3",
            anchors=(_BUFFER, _FLOAT, _DEVICE_MOVE, _LOG_SOFTMAX),
        ),
        Form(
            name="4.51-4.56: .to(dtype=torch.float32, device=input_ids.device)",
            seen_in="4.51.0, 4.51.3, 4.52.1, 4.52.4, 4.53.0, 4.53.3, 4.54.0, 4.54.1, 4.55.0, "
            "4.55.4, 4.56.0, 4.56.1, 4.56.2",
            anchors=(_BUFFER, _TO_FLOAT32, _LOG_SOFTMAX),
        ),
    ),
    original="processed_score[batch_group_indices] = next_token_scores_processed",
    patched="processed_score[batch_group_indices] = next_token_scores_processed.to("
    "processed_score.dtype)",
    check_script=CHECK_SCRIPT,
)
