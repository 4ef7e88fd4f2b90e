"""Run checkpoints in ``vllm.LLM`` (one process, one engine after the other) for ``test_vllm.py``.

``python tests/vllm_runner.py JOB.json OUT.json``: JOB is ``{"runs": [{"name", "path", "prompts", "max_tokens",
"dtype", "hf_overrides"}]}``; OUT gets, per name, the prompt token ids, the prompt log-probabilities (of the
prompt's own tokens, from position 1), the greedy tokens, or the error a run raised (its message, its type, the
functions on its traceback) and whether an engine had started. The engine runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``distributed_executor_backend="uni"``): one vLLM import for all runs.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback


def main(job_file: str, out_file: str) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    job = json.loads(open(job_file, encoding="utf-8").read())
    out = {}
    for run in job["runs"]:
        started = time.time()
        record: dict = {}
        llm = None
        try:
            llm = LLM(run["path"], dtype=run.get("dtype", "float32"), max_model_len=run.get("max_model_len", 512),
                      enforce_eager=True, distributed_executor_backend="uni", seed=0,
                      hf_overrides=run.get("hf_overrides"))
            record["engine_started"] = True
            params = SamplingParams(temperature=0.0, max_tokens=run.get("max_tokens", 32), ignore_eos=True,
                                    prompt_logprobs=0)
            outs = llm.generate(run["prompts"], params, use_tqdm=False)
            record["prompt_token_ids"] = [list(o.prompt_token_ids) for o in outs]
            record["prompt_logprobs"] = [[d[t].logprob for t, d in zip(o.prompt_token_ids[1:], o.prompt_logprobs[1:])]
                                         for o in outs]
            record["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        except Exception as exc:  # noqa: BLE001  (reported to the test, which decides)
            record.update(error=str(exc), error_type=type(exc).__name__,
                          frames=[f.name for f in traceback.extract_tb(exc.__traceback__)])
            record.setdefault("engine_started", False)
        finally:
            del llm
            gc.collect()
        record["seconds"] = round(time.time() - started, 1)
        out[run["name"]] = record
        print(f"{run['name']}: {record['seconds']} s{' (error)' if 'error' in record else ''}", flush=True)
    with open(out_file, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
