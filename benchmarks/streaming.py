"""Peak memory of the streamed (``prune_pretrained``) and the in-memory (``prune_model`` + ``save``) paths on a
random-weight Llama of about 3B parameters saved as bf16 sharded safetensors, and the memory the streamed path
needs for larger shapes, computed from them.

    python benchmarks/streaming.py make   --out /tmp/llama3b               # ~5.6 GB of bf16 shards
    /usr/bin/time -v python benchmarks/streaming.py stream   --src /tmp/llama3b --out /tmp/llama3b-s
    /usr/bin/time -v python benchmarks/streaming.py inmemory --src /tmp/llama3b --out /tmp/llama3b-m
    python benchmarks/streaming.py estimate                                # 3B / 70B / 405B shapes

Calibration: 8 windows of 128 random token ids (seed 0), SlimGPT at 20%, on the CPU.

``write_random_checkpoint`` writes a random-weight checkpoint of any Llama shape tensor by tensor (never the whole
model in memory; the values can be drawn on a GPU); ``benchmarks/gpu_suite.py`` uses it for the streamed 13B run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

SHAPES = {  # hidden, FFN, layers, query heads, KV heads, vocab
    "llama-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=26, num_attention_heads=24,
                     num_key_value_heads=8, vocab_size=32000),
    "llama-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                      num_key_value_heads=8, vocab_size=128256),
    "llama-405b": dict(hidden_size=16384, intermediate_size=53248, num_hidden_layers=126, num_attention_heads=128,
                       num_key_value_heads=8, vocab_size=128256),
}


def make(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES["llama-3b"], max_position_embeddings=4096, tie_word_embeddings=False)
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(out, max_shard_size="1GB")
    n = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(json.dumps({"params": n, "checkpoint_bytes": size, "shards": len(list(out.glob("*.safetensors")))}))


def write_random_checkpoint(out: Path, config, dtype: torch.dtype = torch.bfloat16, device: str = "cpu", seed: int = 0,
                            max_shard_bytes: int = 4 * 2**30, std: float = 0.02) -> dict:
    """Write a random-weight checkpoint of the model ``config`` describes (any ``AutoModelForCausalLM`` config) to
    ``out`` as sharded safetensors with ``model.safetensors.index.json`` and ``config.json``, one tensor at a time.

    Matrices and embeddings are N(0, ``std``) (transformers' own initialisation scale), 1-D tensors (norms, biases) are
    ones / zeros as transformers initialises them. The values are drawn on ``device`` (a GPU draws a 13B in seconds)
    and at most one shard (``max_shard_bytes``) is held on the host at a time. Returns the parameter count, the bytes,
    the number of shards and the seconds it took.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    t = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    del skeleton
    size = torch.empty(0, dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    used = 0
    for name, shape in shapes.items():  # shard plan first: the file names carry the shard count
        nbytes = int(torch.Size(shape).numel()) * size
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    gen = torch.Generator(device).manual_seed(seed)
    weight_map, total = {}, 0
    for k, names in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            shape = shapes[name]
            if len(shape) >= 2:
                x = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, std, generator=gen)
            else:
                x = (torch.zeros if name.endswith("bias") else torch.ones)(shape, dtype=dtype, device=device)
            tensors[name] = x.cpu()
            total += x.numel() * size
            weight_map[name] = fname
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config.dtype = dtype
    config.save_pretrained(out)
    return {"params": sum(int(torch.Size(s).numel()) for s in shapes.values()), "checkpoint_bytes": total,
            "shards": len(shards), "seconds": round(time.perf_counter() - t, 1)}


def _calibration() -> torch.Tensor:
    return torch.randint(0, SHAPES["llama-3b"]["vocab_size"], (8, 128), generator=torch.Generator().manual_seed(0))


def _config():
    from optimum_slimgpt import SlimGPTConfig

    return SlimGPTConfig(pruning_ratio=0.2, dataset=None, batch_size=8)


def stream(src: Path, out: Path) -> None:
    from optimum_slimgpt import prune_pretrained

    t = time.perf_counter()
    res = prune_pretrained(src, out, _config(), calibration=_calibration(), overwrite=True)
    print(json.dumps({"path": "streamed", "seconds": round(time.perf_counter() - t, 1), "format": res.format,
                      "params": res.num_parameters, "bytes": res.weights_bytes}))


def inmemory(src: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    from optimum_slimgpt import SlimGPTPruner

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
    pruner = SlimGPTPruner(_config())
    pruner.prune_model(model, calibration=_calibration())
    res = pruner.save(model, out, overwrite=True)
    print(json.dumps({"path": "in-memory", "seconds": round(time.perf_counter() - t, 1), "format": res.format,
                      "params": res.num_parameters, "bytes": res.weights_bytes}))


def estimate(samples: int = 128, seqlen: int = 2048, act_bytes: int = 2, w_bytes: int = 2) -> None:
    """Peak memory of the streamed path from the shapes (GiB), as the solvers allocate it.

    GPU (``device="cuda"``): one block in the checkpoint's dtype; the larger of the two solves: the FFN's fp32
    Hessian, inverted in its own storage (one f x f, f = FFN width; its spilled copy is on disk, 4 f² bytes) plus the
    fp32 working copy of ``down_proj`` and one temporary of its size (2 hidden x f), or the attention's Hessian,
    inverse and one trial inverse (3 hidden x hidden) plus three fp32 copies of ``o_proj``; the calibration activations twice (the block's inputs and the kept residual
    stream), unless offloaded to the host. Host: the block while it is read and written, the embeddings during the
    capture (vocab x hidden), the offloaded activations, and the ~0.4 GiB of torch + transformers themselves."""
    gib = 2**30
    floor = 0.4 * gib
    rows = []
    for name, s in SHAPES.items():
        h, f, kv, q = s["hidden_size"], s["intermediate_size"], s["num_key_value_heads"], s["num_attention_heads"]
        hd = h // q
        block = (2 * h * q * hd + 2 * h * kv * hd + 3 * h * f) * w_bytes
        solver = max(f * f * 4 + 2 * h * f * 4, 3 * h * h * 4 + 3 * h * (q * hd) * 4)
        acts = 2 * samples * seqlen * h * act_bytes
        embed = s["vocab_size"] * h * w_bytes
        params = s["num_hidden_layers"] * block / w_bytes + 2 * s["vocab_size"] * h
        rows.append({"shape": name, "params_B": round(params / 1e9, 1), "checkpoint_GiB": round(params * w_bytes / gib, 1),
                     "block_GiB": round(block / gib, 2), "solver_GiB": round(solver / gib, 2),
                     "activations_GiB": round(acts / gib, 2), "embeddings_GiB": round(embed / gib, 2),
                     "gpu_peak_GiB": round((block + solver + acts) / gib, 1),
                     "gpu_peak_offloaded_GiB": round((block + solver) / gib, 1),
                     "host_peak_GiB": round((floor + max(block, embed) + block) / gib, 1),
                     "host_peak_offloaded_GiB": round((floor + max(block, embed) + block + acts) / gib, 1),
                     "cpu_only_host_peak_GiB": round((floor + block + solver + acts) / gib, 1)})
    for r in rows:
        print(json.dumps(r))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["make", "stream", "inmemory", "estimate"])
    p.add_argument("--src", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--samples", type=int, default=128, help="estimate: calibration windows")
    p.add_argument("--seqlen", type=int, default=2048, help="estimate: tokens per window")
    a = p.parse_args()
    if a.what == "make":
        make(a.out)
    elif a.what == "stream":
        stream(a.src, a.out)
    elif a.what == "inmemory":
        inmemory(a.src, a.out)
    else:
        estimate(a.samples, a.seqlen)


if __name__ == "__main__":
    main()
