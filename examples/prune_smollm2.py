"""Prune SmolLM2-135M by 20% with WikiText-2 validation text from ../shared, save, and reload.

    python examples/prune_smollm2.py --ratio 0.2 [--out DIR]

Without ``--out`` the checkpoint goes to a new temporary folder (printed), never into the current one.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

parser = argparse.ArgumentParser()
parser.add_argument("--ratio", type=float, default=0.2)
parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
args = parser.parse_args()
out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="smollm2-slim-")) / "smollm2-slim"

d, f = SHARED / "models" / "smollm2-135m-instruct-q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
rows = (SHARED / "data" / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()

pruner = SlimGPTPruner(SlimGPTConfig(pruning_ratio=args.ratio, dataset=rows, num_samples=64, seqlen=512))
model = pruner.prune_model(model, tok, save_dir=out, overwrite=args.overwrite)  # the output is checked first
print(pruner.summary.table())
pruner.save(model, out, tokenizer=tok, overwrite=args.overwrite)
reloaded = AutoModelForCausalLM.from_pretrained(out)
print(f"saved to {out}:", type(reloaded).__name__, sum(p.numel() for p in reloaded.parameters()), "parameters")
