"""Why does structured magnitude destroy SmolLM2? FFN-only diagnosis.

For every layer, channels are ranked by the L2 norm of their weights (gate row + up row + down column, the
``magnitude`` baseline) and the lowest 27% are zeroed (no heads pruned, no compensation). For each layer the
script reports the largest share of the layer's FFN output energy, ``E[x_j^2]·||W_down[:, j]||^2`` over
8 x 256 WikiText-2 validation tokens, carried by one removed channel. It then repeats with the top-k channels
per layer by that energy protected from removal. Perplexity: first 4096 WikiText-2 test tokens, windows of 1024.

    python benchmarks/magnitude_diagnosis.py
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WIKI, load_smollm2  # noqa: E402

from optimum_slimgpt import SlimGPTConfig  # noqa: E402
from optimum_slimgpt.calibration import get_calibration_data  # noqa: E402
from optimum_slimgpt.evaluation import perplexity, wikitext2_test_text, wikitext2_validation_rows  # noqa: E402


@torch.no_grad()
def main() -> None:
    dense, tok = load_smollm2()
    text = wikitext2_test_text(WIKI)
    calib = get_calibration_data(SlimGPTConfig(dataset=wikitext2_validation_rows(WIKI), num_samples=8, seqlen=256),
                                 tok, model=dense)
    layers = dense.model.layers
    energy = [torch.zeros(layer.mlp.down_proj.in_features) for layer in layers]
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(
        lambda m, a, i=i: energy[i].add_(a[0].float().pow(2).sum((0, 1)))) for i, layer in enumerate(layers)]
    dense(calib)
    for h in hooks:
        h.remove()

    def ppl(m) -> float:
        return perplexity(m, tok, text, seqlen=1024, max_tokens=4096, show_progress=False)

    print(f"dense: ppl {ppl(dense):.2f}")
    for protect in (0, 1, 4):
        m = copy.deepcopy(dense)
        worst = []
        for i, layer in enumerate(m.model.layers):
            mlp = layer.mlp
            score = (mlp.gate_proj.weight.pow(2).sum(1) + mlp.up_proj.weight.pow(2).sum(1)
                     + mlp.down_proj.weight.pow(2).sum(0))
            share = energy[i] * mlp.down_proj.weight.pow(2).sum(0)
            share = share / share.sum()
            if protect:
                score[torch.topk(share, protect).indices] = float("inf")
            removed = torch.argsort(score)[: int(0.27 * len(score))]
            worst.append((i, float(share[removed].max())))
            mlp.down_proj.weight[:, removed] = 0
        top = ", ".join(f"layer {i}: {s:.0%}" for i, s in sorted(worst, key=lambda t: -t[1])[:3])
        print(f"protect top-{protect}: ppl {ppl(m):.3g}; largest energy share of a removed channel: {top}")


if __name__ == "__main__":
    main()
