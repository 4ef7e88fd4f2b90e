"""lm-evaluation-harness on local files: the task YAMLs of ``optimum_slimgpt.lm_eval_tasks``, ``evaluate_lm_eval``
(the in-memory ``HFLM`` bridge), per-item agreement with the built-in scorer, and the ``lm_eval`` CLI on a per-layer
pruned checkpoint loaded with ``trust_remote_code=True``.

Everything runs on a tiny random Llama with a byte-level tokenizer built in code and a few hand-written items per
task in ``tmp_path`` (nothing from the Hub, nothing downloaded). Tests that need ``lm_eval`` skip without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optimum_slimgpt import evaluation as ev
from optimum_slimgpt.lm_eval_tasks import LM_EVAL_TASKS, write_lm_eval_tasks

from helpers import checkout_env  # noqa: E402
TASKS = ["piqa", "arc_easy", "hellaswag", "boolq", "openbookqa"]
BUILTIN = {"openbookqa": "openbook_qa"}  # lm-eval name -> built-in name where they differ

# float64 everywhere: the two scorers then differ only by float64 rounding in the forward passes (different batch
# shapes, an attention mask or not, the LM head on all or on the last positions). Each log-likelihood sums at most
# ~60 per-token log-probabilities of magnitude <= ~6 (vocabulary 259), each the result of ~10^4 float64 operations
# of O(1) values: |error| <~ 60 * 10^4 * 2.2e-16 ~ 1.3e-10, so 1e-9 bounds it with room and is far below any gap
# that decides a choice here (asserted below).
LL_TOL = 1e-9


def byte_tokenizer(bos: bool):
    """A byte-level ``PreTrainedTokenizerFast`` (one token per UTF-8 byte, ids 3..258; <unk>=0, <s>=1, </s>=2).
    ``bos=True`` adds ``<s>`` before every text by default (as a Llama tokenizer); ``bos=False`` adds nothing
    (as GPT-2, SmolLM2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    if bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def tiny_llama(dtype=torch.float64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=None)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_tiny_data(root: Path) -> Path:
    """A data folder in the layout of ``shared/data`` with 3 items per task, with the awkward cases of the real
    files: a PIQA solution with a trailing space, a BoolQ passage that itself contains ``"\\nQuestion: "``, a
    HellaSwag line with ``[title]`` / ``[...]`` and a double space (which lm-eval's preprocess rewrites)."""
    _jsonl(root / "piqa" / "valid.jsonl", [
        {"goal": "How do I dry wet shoes?", "sol1": "Stuff them with newspaper.", "sol2": "Put them in the freezer. "},
        {"goal": "To cut a tomato thinly,", "sol1": "use a sharp knife.", "sol2": "use a spoon."},
        {"goal": "Keep bread fresh", "sol1": "leave it open on the counter", "sol2": "store it in a sealed bag"},
    ])
    (root / "piqa" / "valid-labels.lst").write_text("0\n0\n1\n", encoding="utf-8")
    _jsonl(root / "mosaicml-eval" / "arc_easy.jsonl", [
        {"query": "Question: Which gas do plants take in?", "choices": ["oxygen", "carbon dioxide", "helium", "neon"],
         "gold": 1},
        {"query": "Question: What melts ice fastest?", "choices": ["salt", "sand", "sugar", "stone"], "gold": 0},
        {"query": "Question: The Sun is a", "choices": ["planet", "moon", "star", "comet"], "gold": 2},
    ])
    _jsonl(root / "mosaicml-eval" / "boolq.jsonl", [
        {"query": "Passage: Cats are mammals. They purr.\nQuestion: is a cat a mammal?", "choices": ["no", "yes"],
         "gold": 1},
        {"query": "Passage: A book called ``Snakes in\nQuestion: The Answer Book'' says so.\nQuestion: is the book "
                  "about fish?", "choices": ["no", "yes"], "gold": 0},
        {"query": "Passage: Water boils at 100 C at sea level.\nQuestion: does water boil at 50 c?",
         "choices": ["no", "yes"], "gold": 0},
    ])
    _jsonl(root / "mosaicml-eval" / "openbook_qa.jsonl", [
        {"query": "Predators eat", "choices": ["lions", "humans", "bunnies", "grass"], "gold": 2},
        {"query": "There is most likely going to be fog around:", "choices": ["a marsh", "a tundra", "the plains",
                                                                            "a desert"], "gold": 0},
        {"query": "An animal that only eats plants is a", "choices": ["moth", "pig", "lion", "shark"], "gold": 0},
    ])
    hs = [
        "Roof shingle removal: A man is sitting on a roof. he", "3", "is using wrap to wrap a pair of skis.",
        "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing on a roof.",
        "Home and Garden: How to paint a fence [title] Buy paint. [step] Pick", "1", "a [bright | dark] colour.",
        "the right  brush.", "a fence.", "nothing at all.",
        "Baking: A woman mixes flour. she", "0", "adds eggs to the bowl.", "jumps over the moon.",
        "sings to the flour.", "paints the ceiling.",
    ]
    (root / "hellaswag").mkdir(parents=True, exist_ok=True)
    (root / "hellaswag" / "hellaswag_val_full.txt").write_text("\n".join(hs) + "\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------------------ writing tasks
def test_write_lm_eval_tasks(tmp_path):
    data = write_tiny_data(tmp_path / "data")
    out = write_lm_eval_tasks(tmp_path / "tasks", data_dir=data)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.yaml" for t in LM_EVAL_TASKS)
    piqa = (out / "piqa.yaml").read_text()
    assert json.dumps(str((data / "piqa" / "valid.jsonl").resolve())) in piqa
    assert json.dumps(str((data / "piqa" / "valid-labels.lst").resolve())) in piqa
    assert "@DATA_FILE@" not in "".join(p.read_text() for p in out.iterdir())
    # one task, a per-task file, the built-in name openbook_qa
    other = tmp_path / "obqa.jsonl"
    other.write_text((data / "mosaicml-eval" / "openbook_qa.jsonl").read_text())
    out2 = write_lm_eval_tasks(tmp_path / "one", tasks=["openbook_qa"], data_dir=data, paths={"openbook_qa": other})
    assert [p.name for p in out2.iterdir()] == ["openbookqa.yaml"]
    assert json.dumps(str(other.resolve())) in (out2 / "openbookqa.yaml").read_text()
    with pytest.raises(KeyError, match="winogrande"):
        write_lm_eval_tasks(tmp_path / "x", tasks=["winogrande"], data_dir=data)
    with pytest.raises(FileNotFoundError, match="valid-labels.lst"):
        (data / "piqa" / "valid-labels.lst").unlink()
        write_lm_eval_tasks(tmp_path / "y", tasks=["piqa"], data_dir=data)


def test_cli_module_writes_tasks(tmp_path, capsys):
    from optimum_slimgpt.lm_eval_tasks import main

    data = write_tiny_data(tmp_path / "data")
    assert main(["--out", str(tmp_path / "t"), "--data-dir", str(data), "--tasks", "boolq,piqa"]) == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["boolq.yaml", "piqa.yaml"]
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "t"), "--data-dir", str(tmp_path / "nowhere")])
    assert "not found" in capsys.readouterr().err


def test_evaluate_lm_eval_without_lm_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(ImportError, match=r"pip install optimum-slimgpt\[eval\]"):
        ev.evaluate_lm_eval(tiny_llama(), byte_tokenizer(False), ["piqa"])
    assert ev.lm_eval_bridge is ev.evaluate_lm_eval


# ------------------------------------------------------------------------------------------------ with lm_eval
@pytest.fixture(scope="module")
def lm_eval_mod():
    return pytest.importorskip("lm_eval")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test here may reach the Hub; datasets' cache goes to the test's folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def test_lm_eval_prompts_equal_builtin_items(lm_eval_mod, tmp_path):
    """lm-eval renders the YAMLs' prompts (its Jinja templates, its target delimiter, its hellaswag preprocess);
    the built-in loaders build them in Python: the strings and gold indices must be identical."""
    from lm_eval.tasks import TaskManager

    data = write_tiny_data(tmp_path / "data")
    tm = TaskManager(include_path=str(write_lm_eval_tasks(tmp_path / "tasks", data_dir=data)), include_defaults=False)
    loaded = tm.load(TASKS)["tasks"]
    for name in TASKS:
        task = loaded[name]
        docs = list(task.eval_docs)
        items = ev.load_task(BUILTIN.get(name, name), data_dir=data)
        assert len(docs) == len(items) == 3, name
        for doc, it in zip(docs, items):
            ctx = task.fewshot_context(doc, num_fewshot=0)
            choices = [task.config.target_delimiter + c for c in task.doc_to_choice(doc)]
            assert (ctx, choices, int(task.doc_to_target(doc))) == (it.context, it.choices, it.gold), name
    # the awkward cases came through as lm-eval's own tasks would have them
    boolq = ev.load_task("boolq", data_dir=data)
    assert boolq[1].context == ("A book called ``Snakes in\nQuestion: The Answer Book'' says so.\nQuestion: is the "
                                "book about fish?\nAnswer:")
    hs = ev.load_task("hellaswag", data_dir=data)[1]
    assert hs.context == "Home and Garden: How to paint a fence. Buy paint. Pick"
    assert hs.choices[:2] == [" a colour.", " the right brush."]


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
def test_builtin_scorer_equals_lm_eval_per_item(lm_eval_mod, tmp_path, bos):
    """Same per-item log-likelihoods (float64), hence the same choices, acc and acc_norm, from the built-in scorer
    and from lm-eval's HFLM, with a GPT-2-style tokenizer (no BOS) and a Llama-style one (BOS by default)."""
    data = write_tiny_data(tmp_path / "data")
    model, tok = tiny_llama(), byte_tokenizer(bos)
    harness = ev.evaluate_lm_eval(model, tok, TASKS, data_dir=data, batch_size=4, return_details=True)
    for name in TASKS:
        ours = ev.zero_shot(model, tok, BUILTIN.get(name, name), data_dir=data, batch_size=3, return_details=True,
                            show_progress=False)
        theirs = harness[name]
        assert theirs["n"] == ours["n"] == 3 and theirs["gold"] == ours["gold"], name
        for a, b in zip(ours["logliks"], theirs["logliks"]):
            assert a == pytest.approx(b, abs=LL_TOL, rel=0), name
            gaps = sorted(abs(x - y) for i, x in enumerate(a) for y in a[i + 1:])
            assert gaps[0] > 100 * LL_TOL, f"{name}: a near tie would make the choice comparison meaningless"
        assert (ours["acc"], ours["acc_norm"]) == (theirs["acc"], theirs["acc_norm"]), name
        assert ours["acc_stderr"] == pytest.approx(theirs["acc_stderr"], rel=1e-12)
    # the BOS really is there (or not): the first item's context is scored after <s> only with bos=True
    ctx_ids, _ = ev.encode_pair(tok, "Question: x\nAnswer:", " y")
    assert (ctx_ids[0] == 1) is bos


def test_evaluate_zero_shot_harness_switch(lm_eval_mod, tmp_path):
    data = write_tiny_data(tmp_path / "data")
    model, tok = tiny_llama(), byte_tokenizer(False)
    a = ev.evaluate_zero_shot(model, tok, ["openbook_qa", "boolq"], data_dir=data, harness="lm-eval")
    b = ev.evaluate_zero_shot(model, tok, ["openbook_qa", "boolq"], data_dir=data)
    assert list(a) == list(b) == ["openbook_qa", "boolq"]
    for t in a:
        assert a[t]["task"] == t and a[t]["n"] == b[t]["n"] == 3
        assert (a[t]["acc"], a[t]["acc_norm"]) == (b[t]["acc"], b[t]["acc_norm"])
    with pytest.raises(ValueError, match="harness"):
        ev.evaluate_zero_shot(model, tok, ["boolq"], data_dir=data, harness="lighteval")
    with pytest.raises(KeyError, match="copa"):
        ev.evaluate_lm_eval(model, tok, ["copa"], data_dir=data)
    # lm-eval reseeds the global RNGs; the bridge gives the caller its state back
    torch.manual_seed(123)
    ev.evaluate_lm_eval(model, tok, ["boolq"], data_dir=data, limit=1)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1))


def _pruned_per_layer_float64():
    from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner, get_adapter

    model = tiny_llama(torch.float32)
    calib = torch.randint(3, 259, (8, 32), generator=torch.Generator().manual_seed(0))
    cfg = SlimGPTConfig(pruning_ratio=0.3, schedule="log_increase", dataset=None, num_samples=8, seqlen=32,
                        batch_size=4)
    SlimGPTPruner(cfg).prune_model(model, calibration=calib)
    adapter = get_adapter(model)
    sizes = [(adapter.head_layout(b, model.config).num_heads, adapter.num_channels(b))
             for b in adapter.get_blocks(model)]
    assert len(set(sizes)) > 1, f"the log_increase schedule should give layers of different sizes, got {sizes}"
    return model.to(torch.float64).eval()


@pytest.fixture(scope="module", autouse=True)
def _lm_eval_cli_run(tmp_path_factory):
    """The ``lm_eval`` CLI process of ``test_lm_eval_cli_on_per_layer_checkpoint``, started when this module starts
    (when lm_eval is installed): it spends ~15 s on one core importing and indexing lm-eval's ~14,000 task files,
    while the tests before it run beside it; that test waits for it. ``(model, tokenizer, data dir, checkpoint,
    output dir, process, log dir)``; the checkpoint's checks are that test's."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        yield None
        return
    from optimum_slimgpt import save_pruned_model

    root = tmp_path_factory.mktemp("lm_eval_cli")
    data = write_tiny_data(root / "data")
    tasks_dir = write_lm_eval_tasks(root / "tasks", data_dir=data)
    model, tok = _pruned_per_layer_float64(), byte_tokenizer(bos=True)
    res = save_pruned_model(model, root / "ckpt", tokenizer=tok)
    out_dir = root / "lm_eval_out"
    env = checkout_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
                       HF_MODULES_CACHE=str(root / "hf_modules"), HF_DATASETS_CACHE=str(root / "hf_datasets"))
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={res.path},trust_remote_code=True,dtype=float64",
           "--include_path", str(tasks_dir), "--tasks", ",".join(TASKS), "--device", "cpu", "--batch_size", "1",
           "--output_path", str(out_dir), "--log_samples"]
    logs = tmp_path_factory.mktemp("lm_eval_cli_logs")
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:  # files: a full pipe would block it
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        yield model, tok, data, res, out_dir, proc, logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_lm_eval_cli_on_per_layer_checkpoint(lm_eval_mod, _lm_eval_cli_run):
    """``lm_eval --model hf --model_args pretrained=OUT,trust_remote_code=True --include_path TASKS`` on a saved
    per-layer checkpoint (``model_type: slimgpt_llama``, loaded through its remote code) gives the numbers of the
    in-memory bridge and of the built-in scorer, per item."""
    model, tok, data, res, out_dir, proc, logs = _lm_eval_cli_run
    assert res.format == "per_layer"
    assert json.loads((res.path / "config.json").read_text())["model_type"] == "slimgpt_llama"
    bridge = ev.evaluate_lm_eval(model, tok, TASKS, data_dir=data, batch_size=1, return_details=True)  # meanwhile

    proc.wait(timeout=600)
    assert proc.returncode == 0, (logs / "stdout").read_text()[-3000:] + (logs / "stderr").read_text()[-3000:]
    (results_file,) = out_dir.rglob("results_*.json")
    cli = json.loads(results_file.read_text())
    assert cli["config"]["model_num_parameters"] == sum(p.numel() for p in model.parameters())

    for name in TASKS:
        r = cli["results"][name]
        assert (r["acc,none"], r["acc_norm,none"]) == (bridge[name]["acc"], bridge[name]["acc_norm"]), name
        (samples_file,) = out_dir.rglob(f"samples_{name}_*.jsonl")
        samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()),
                         key=lambda d: d["doc_id"])
        cli_ll = [[float(x[0]) for x in d["filtered_resps"]] for d in samples]
        builtin = ev.zero_shot(model, tok, BUILTIN.get(name, name), data_dir=data, return_details=True,
                               show_progress=False)
        assert (builtin["acc"], builtin["acc_norm"]) == (bridge[name]["acc"], bridge[name]["acc_norm"]), name
        for a, b, c in zip(cli_ll, bridge[name]["logliks"], builtin["logliks"]):
            assert a == pytest.approx(b, abs=LL_TOL, rel=0) and c == pytest.approx(b, abs=LL_TOL, rel=0), name


def test_cli_eval_harness_flag(lm_eval_mod, tmp_path, capsys, monkeypatch):
    """``optimum-slimgpt eval --harness lm-eval --tasks ...`` gives the built-in harness's accuracies; without lm_eval
    the flag is one clear error."""
    from helpers import call_cli

    data = write_tiny_data(tmp_path / "data")
    model = tiny_llama(torch.float32)
    model.save_pretrained(tmp_path / "m")
    byte_tokenizer(False).save_pretrained(tmp_path / "m")
    out = {}
    for harness in ("builtin", "lm-eval"):
        rc, stdout, err = call_cli(capsys, "eval", "--model", str(tmp_path / "m"), "--tasks", "openbookqa,boolq",
                                   "--data-dir", str(data), "--harness", harness, "--json", str(tmp_path / f"{harness}.json"))
        assert rc == 0, err
        assert "openbookqa: acc" in stdout and "boolq: acc" in stdout
        out[harness] = json.loads((tmp_path / f"{harness}.json").read_text())
        assert out[harness]["zero_shot_harness"] == harness
    for t in ("openbookqa", "boolq"):
        a, b = out["builtin"]["zero_shot"][t], out["lm-eval"]["zero_shot"][t]
        assert (a["acc"], a["acc_norm"], a["n"]) == (b["acc"], b["acc_norm"], b["n"]) and a["n"] == 3
    rc, _, err = call_cli(capsys, "eval", "--model", str(tmp_path / "m"), "--tasks", "copa", "--data-dir", str(data),
                          "--harness", "lm-eval")
    assert rc == 2 and "copa" in err and "openbookqa" in err
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    rc, _, err = call_cli(capsys, "eval", "--model", str(tmp_path / "m"), "--tasks", "boolq", "--data-dir", str(data),
                          "--harness", "lm-eval")
    assert rc == 2 and "pip install optimum-slimgpt[eval]" in err
