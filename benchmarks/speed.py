"""Speed and memory of ``prune_model`` on random-weight models of real shapes (issue: speed and scale).

Builds a Llama model of a named shape with random weights (no download), prunes it with random calibration
tokens, and prints/appends one JSON line per run with the total time, the per-phase times
(``PruningSummary.timings``: calibration data, capture, Hessians, head solve, FFN solve, surgery, block
outputs), the peak GPU memory, and optionally the decode throughput of the dense and the pruned model
(HF ``generate``, greedy, ``--decode-batch`` sizes, ``--new-tokens`` new tokens after a 128-token prompt).

    # on one GPU (the model on the GPU)
    python benchmarks/speed.py --shape llama-7b --ratio 0.2 --dtype bfloat16 --device cuda
    python benchmarks/speed.py --shape llama3-8b --ratio 0.2 0.5 --decode
    # model kept on the CPU, one block at a time on the GPU
    python benchmarks/speed.py --shape llama-13b --model-device cpu --device cuda
    # CPU smoke run (what the test suite does)
    python benchmarks/speed.py --shape tiny --device cpu --samples 4 --seqlen 64 --dtype float32

Per-phase times are wall-clock around each phase; on a GPU each phase ends with a host sync (a ``.item()`` or
a copy), so they add up to the total within a few percent.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner

SHAPES = {
    # name: hidden, intermediate, layers, heads, kv heads, vocab
    "llama-7b": (4096, 11008, 32, 32, 32, 32000),
    "llama3-8b": (4096, 14336, 32, 32, 8, 128256),
    "llama-13b": (5120, 13824, 40, 40, 40, 32000),
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152),
    "tiny": (128, 344, 4, 8, 4, 512),  # grouped-query attention, like llama3-8b
    "tiny-mha": (128, 344, 4, 8, 8, 512),  # one KV head per query head, like llama-7b
}


def llama_config(shape: str) -> LlamaConfig:
    """The ``LlamaConfig`` of a named shape (untied head, 4096 positions)."""
    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    return LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build(shape: str, dtype: torch.dtype, device: str, seed: int = 0) -> LlamaForCausalLM:
    """A random-weight Llama of ``shape`` on ``device`` in ``dtype``, in eval mode. float32 models are initialised
    in float32; other dtypes are initialised in that dtype directly (a 7B never exists in float32 on the GPU)."""
    cfg = llama_config(shape)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    try:
        if dtype.is_floating_point and dtype != torch.float32:
            torch.set_default_dtype(dtype)
        with torch.device(device):
            model = LlamaForCausalLM(cfg)  # transformers initialises N(0, 0.02): random but well-scaled
    finally:
        torch.set_default_dtype(default)
    return model.to(dtype).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def decode_throughput(model, batch: int, new_tokens: int, vocab: int, device: str, prompt: int = 128) -> dict:
    ids = torch.randint(3, vocab, (batch, prompt), generator=torch.Generator().manual_seed(1)).to(device)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
    _sync(device)
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
    _sync(device)
    dt = time.perf_counter() - t
    n = (out.shape[1] - prompt) * batch
    return {"batch": batch, "new_tokens": new_tokens, "seconds": round(dt, 3), "tokens_per_s": round(n / dt, 1),
            "ms_per_step": round(1000 * dt / new_tokens, 2)}


def time_prune(model, calib: torch.Tensor, ratio: float, device: str, *, batch_size: int = 8,
               channel_multiple: int = 1, offload_activations: bool = False, mask_only: bool = False) -> dict:
    """Prune ``model`` in place with SlimGPT at ``ratio`` on ``calib`` (``(samples, seqlen)`` token ids) and return
    the wall time, the per-phase times (``PruningSummary.timings``; seconds, unrounded), the removed fraction and,
    on a GPU, the peak memory allocated during the run (the model's own weights included) and the memory the model
    held before it."""
    cuda = device.startswith("cuda")
    samples, seqlen = calib.shape
    cfg = SlimGPTConfig(pruning_ratio=ratio, dataset=None, num_samples=samples, seqlen=seqlen, batch_size=batch_size,
                        device=device, channel_multiple=channel_multiple, offload_activations=offload_activations)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else None
    _sync(device)
    t = time.perf_counter()
    pruner = SlimGPTPruner(cfg, mask_only=mask_only)
    pruner.prune_model(model, calibration=calib)
    _sync(device)
    total = time.perf_counter() - t
    s = pruner.summary
    return {"prune_seconds": total, "removed": round(s.achieved_ratio, 4), "timings": dict(s.timings),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "model_gpu_gib": round(before / 2**30, 2) if cuda else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="llama-7b")
    ap.add_argument("--ratio", type=float, nargs="+", default=[0.2])
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where each block is pruned")
    ap.add_argument("--model-device", default=None, help="where the model lives (default: --device)")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--channel-multiple", type=lambda v: v if v == "auto" else int(v), default="auto",
                    help="the config's channel_multiple: 'auto' (the default) or an int (1 = whole channels)")
    ap.add_argument("--offload-activations", action="store_true")
    ap.add_argument("--compare-masked", action="store_true", help="also time mask_only=True (no surgery)")
    ap.add_argument("--decode", action="store_true", help="measure dense vs pruned decode throughput")
    ap.add_argument("--decode-batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--out", default="bench_out/speed.jsonl")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    model_device = args.model_device or args.device
    hf_logging.disable_progress_bar()
    vocab = SHAPES[args.shape][-1]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cuda = args.device.startswith("cuda")

    t = time.perf_counter()
    base = build(args.shape, dtype, model_device)
    build_s = time.perf_counter() - t
    dense_decode = []
    if args.decode:
        dense_decode = [decode_throughput(base, b, args.new_tokens, vocab, model_device) for b in args.decode_batch]
    calib = torch.randint(3, vocab, (args.samples, args.seqlen), generator=torch.Generator().manual_seed(0))
    runs = [(r, False) for r in args.ratio] + ([(r, True) for r in args.ratio] if args.compare_masked else [])
    for ratio, masked in runs:
        model = copy.deepcopy(base) if len(runs) > 1 else base
        timed = time_prune(model, calib, ratio, args.device, batch_size=args.batch_size,
                           channel_multiple=args.channel_multiple, offload_activations=args.offload_activations,
                           mask_only=masked)
        row = {
            "shape": args.shape, "ratio": ratio, "mask_only": masked, "dtype": args.dtype, "device": args.device,
            "model_device": model_device, "samples": args.samples, "seqlen": args.seqlen,
            "batch_size": args.batch_size, "channel_multiple": args.channel_multiple,
            "offload_activations": args.offload_activations, "build_seconds": round(build_s, 1),
            "prune_seconds": round(timed["prune_seconds"], 2), "removed": timed["removed"],
            "timings": {k: round(v, 2) for k, v in timed["timings"].items()},
            "peak_gpu_gib": timed["peak_gpu_gib"],
            "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
        }
        if args.decode and not masked:
            row["decode_dense"] = dense_decode
            row["decode_pruned"] = [decode_throughput(model, b, args.new_tokens, vocab, model_device)
                                    for b in args.decode_batch]
            row["decode_speedup"] = [round(p["tokens_per_s"] / d["tokens_per_s"], 3)
                                     for p, d in zip(row["decode_pruned"], dense_decode)]
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        if model is not base:
            del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
