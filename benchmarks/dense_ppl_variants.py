"""Dense SmolLM2-135M perplexity under protocol variants: looking for the cause of the 1.5% gap to the
official dense number (22.13; ours 21.81 with the quality table's protocol).

Each variant changes one thing of the quality table's protocol (first 65,536 tokens of the WikiText-2 raw
test text, rows joined with blank lines, windows of 2048, float32):

- ``fp32``: the protocol itself (the GGUF loaded with ``dtype="auto"`` gives float32 too).
- ``bf16``: the same model cast to bfloat16.
- ``bos``: a BOS token before every window.
- ``tokens-v1``: the tokenised ``wikitext-2-v1`` test text (``<unk>``, ``@-@``) instead of the raw one.

    python benchmarks/dense_ppl_variants.py [--variants fp32 bf16 bos tokens-v1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WIKI, load_smollm2  # noqa: E402

from optimum_slimgpt.evaluation import perplexity, wikitext2_test_text  # noqa: E402

VARIANTS = ("fp32", "bf16", "bos", "tokens-v1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--tokens", type=int, default=65_536)
    args = ap.parse_args()
    dense, tok = load_smollm2()
    raw = wikitext2_test_text(WIKI)
    lines = (WIKI / "wiki.test.tokens").read_text(encoding="utf-8").splitlines(keepends=True)
    tokens_v1 = "\n\n".join("" if not line.strip() else line for line in lines)
    for name in args.variants:
        model, text, kw = dense, raw, {}
        if name == "bf16":
            model = dense.to(torch.bfloat16)
        elif name == "bos":
            text = tok(raw, add_special_tokens=False, return_tensors="pt").input_ids[0][: args.tokens]
            kw = dict(add_bos=True)
        elif name == "tokens-v1":
            text = tokens_v1
        t = time.perf_counter()
        ppl = perplexity(model, tok, text, seqlen=2048, max_tokens=args.tokens, show_progress=False, **kw)
        print(f"{name}: ppl {ppl:.2f} ({time.perf_counter() - t:.0f} s)", flush=True)
        if name == "bf16":
            dense = dense.to(torch.float32)


if __name__ == "__main__":
    main()
