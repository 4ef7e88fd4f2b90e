#!/usr/bin/env bash
# The GPU benchmark run in one command: random-weight Llama-2-7B and Llama-3-8B (GQA) prunes timed per phase with
# their peak GPU memory, the streamed 13B path (prune_pretrained from a bf16 checkpoint on local disk), and HF decode
# tokens/s dense vs pruned. At most 8 minutes on one H100 (80 GB); one JSON file.
#
#   bash benchmarks/gpu_suite.sh                  # writes $OUT/gpu_suite.json when $OUT is set, else bench_out/
#   bash benchmarks/gpu_suite.sh results.json     # or a path (a folder gets gpu_suite.json inside it)
#   bash benchmarks/gpu_suite.sh --tiny OUT.json  # the same code paths on tiny shapes on the CPU, in seconds
#
# Options after these go to the driver (python benchmarks/gpu_suite.py --help): --samples, --seqlen, --ratio,
# --parts, --budget PART=SECONDS, --total-budget, --workdir. Needs torch, transformers and accelerate; the package is
# taken from this checkout (PYTHONPATH), nothing is downloaded.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the driver keeps its own budgets (450 s in all, 240 s with --tiny); this is the hard stop around it (8 minutes)
exec timeout --kill-after=10 "${GPU_SUITE_TIMEOUT_S:-470}" "${PYTHON:-python}" benchmarks/gpu_suite.py "$@"
