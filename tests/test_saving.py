"""Save, load and share pruned models: per-layer (slimgpt_<family>), uniform and padded checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from optimum_slimgpt import PruningRecord, SlimGPTConfig, SlimGPTPruner, get_adapter, save_pruned_model, to_pruned_model
from optimum_slimgpt.saving import ExportError

from helpers import STORIES_BIN, have_shared, selected, tok512_tokenizer
from tolerances import assert_same_function, logits64

VOCAB = 128
CALIB = torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(0))
PROMPT = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def _tiny(family: str, **overrides):
    import transformers

    cfg_cls, lm_cls, extra = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "mistral": ("MistralConfig", "MistralForCausalLM", {}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
        "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
        "opt": ("OPTConfig", "OPTForCausalLM", {"ffn_dim": 128, "word_embed_proj_dim": 64, "pad_token_id": 0,
                                                "bos_token_id": 1, "eos_token_id": 2}),
    }[family]
    kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8,
              num_key_value_heads=4, max_position_embeddings=128, **extra)
    if family == "opt":  # multi-head attention, FFN width called ffn_dim
        del kw["intermediate_size"], kw["num_key_value_heads"]
    kw.update(overrides)
    torch.manual_seed(0)
    return getattr(transformers, lm_cls)(getattr(transformers, cfg_cls)(**kw)).eval()


def _pruned(family: str = "llama", ratio: float = 0.3, schedule: str = "log_increase", **overrides):
    model = _tiny(family, **overrides)
    cfg = SlimGPTConfig(pruning_ratio=ratio, schedule=schedule, dataset=None, num_samples=8, seqlen=32, batch_size=4)
    SlimGPTPruner(cfg).prune_model(model, calibration=CALIB)
    return model


def _logits(model, ids=PROMPT):
    return logits64(model, ids)  # same-function checks run in float64 (tests/tolerances.py)


@torch.no_grad()
def _greedy(model, cache=None, ids=PROMPT, n=8):
    kw = {"cache_implementation": cache} if cache else {}
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          pad_token_id=0, **kw)


def _sizes(model):
    adapter = get_adapter(model)
    out = []
    for b in adapter.get_blocks(model):
        lay = adapter.head_layout(b, model.config)
        out.append((lay.num_heads, lay.num_kv_heads, adapter.num_channels(b)))
    return out


def _load(path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **kw).eval()


@pytest.fixture(autouse=True)
def _quiet_progress():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


# ------------------------------------------------------------------------------------------ per-layer format
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_per_layer_round_trip(family, tmp_path):
    model = _pruned(family)
    sizes = _sizes(model)
    assert len(set(sizes)) > 1, f"the log_increase schedule should give different layers, got {sizes}"
    assert type(model).__name__ == f"SlimGPT{model.config.pruning_config['base_architectures'][0]}"
    ref, ref_greedy = _logits(model), _greedy(model)
    assert torch.equal(_greedy(model, "static"), ref_greedy)  # the in-memory model works with StaticCache too

    res = save_pruned_model(model, tmp_path / "ckpt")
    assert res.format == "per_layer" and "different sizes" in res.reason
    cfg = json.loads((res.path / "config.json").read_text())
    assert cfg["model_type"] == f"slimgpt_{family}"
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    for f in ("configuration_slimgpt.py", "modeling_slimgpt.py"):
        assert (res.path / f).is_file(), f
    # global sizes stay at the original values; head_dim explicit; every layer and every key explicit
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (8, 4, 128)
    assert cfg["head_dim"] == (16 if family == "qwen3" else 8)
    plc = cfg["per_layer_config"]
    assert len(plc) == 3
    assert [(v["num_attention_heads"], v["num_key_value_heads"], v["intermediate_size"])
            for _, v in sorted(plc.items(), key=lambda kv: int(kv[0]))] == sizes
    pc = cfg["pruning_config"]
    assert pc["pruning_method"] == "slimgpt" and pc["pruning_ratio"] == 0.3 and pc["export_format"] == "per_layer"
    assert pc["base_model_type"] == family and len(pc["layer_ratios"]) == 3
    assert pc["calibration"]["num_samples"] == 8 and "optimum_slimgpt" in pc["meta"]["pruner"][0]
    assert "export_format" not in model.config.pruning_config  # the in-memory record is not modified

    loaded = _load(res.path)
    assert type(loaded) is type(model) and _sizes(loaded) == sizes
    assert_same_function(_logits(loaded), ref)
    assert torch.equal(_greedy(loaded), ref_greedy)
    assert torch.equal(_greedy(loaded, "static"), ref_greedy)


def test_in_memory_model_behaves_like_the_family(tmp_path):
    """save_pretrained works directly; hidden states, attention switch and AutoModel (vLLM's entry) work."""
    from transformers import AutoConfig, AutoModel
    from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

    model = _pruned("qwen2")
    ref = _logits(model)
    out = model(PROMPT, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    model.save_pretrained(tmp_path / "direct")
    loaded = _load(tmp_path / "direct")
    assert_same_function(_logits(loaded), ref)
    loaded.set_attn_implementation("eager")
    # (that every layer follows the switch is tested in test_families with a counting attention function)
    assert_same_function(_logits(loaded), ref)

    base = AutoModel.from_pretrained(tmp_path / "direct")
    assert type(base).__name__ == "SlimGPTQwen2Model"
    config = AutoConfig.from_pretrained(tmp_path / "direct")
    assert [tuple(s.values()) for s in config.layer_sizes()] == _sizes(model)
    assert config.layer_config(2).num_attention_heads == _sizes(model)[2][0]
    with pytest.raises(AmbiguousGlobalPerLayerAttributeError):
        config.num_attention_heads  # noqa: B018 - per-layer attributes are ambiguous on the global config


def test_config_validation():
    from optimum_slimgpt.modeling import get_pruned_family

    SlimGPTLlamaConfig = get_pruned_family("llama").config_class

    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=4, head_dim=8)
    ok = SlimGPTLlamaConfig(**base, per_layer_config={
        0: {"num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 100},
        1: {"num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 128}})
    ok.validate()  # 64 % 6 != 0 is fine: head_dim is explicit
    assert ok.layer_config(0).num_attention_heads == 6 and ok.layer_config(1).intermediate_size == 128
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        SlimGPTLlamaConfig(**base, per_layer_config={0: {"num_attention_heads": 6, "num_key_value_heads": 4}})
    with pytest.raises(ValueError, match="positive integer"):
        SlimGPTLlamaConfig(**base, per_layer_config={1: {"intermediate_size": 0}})
    with pytest.raises(ValueError, match="outside|range"):
        SlimGPTLlamaConfig(**base, per_layer_config={5: {"intermediate_size": 10}})


# ------------------------------------------------------------------------------------------ remote code
_REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "optimum_slimgpt" or name.startswith("optimum_slimgpt."):
                raise ImportError("optimum_slimgpt is blocked in this test")
            return None
    import os
    sys.meta_path.insert(0, _Block())
    try:
        import optimum_slimgpt  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("optimum_slimgpt is importable: the test would prove nothing")
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging
    logging.disable_progress_bar()
    ids = torch.load(sys.argv[1])
    out = {}
    for path in sys.argv[3:]:
        try:
            AutoModelForCausalLM.from_pretrained(path)
            no_flag = "loaded without trust_remote_code"
        except Exception as e:  # noqa: BLE001
            no_flag = f"{type(e).__name__}: {e}"
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
        with torch.no_grad():
            greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                    pad_token_id=0)
            static = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                    pad_token_id=0, cache_implementation="static")
            logits = model.double()(ids).logits  # compared in float64, as in the parent (tests/tolerances.py)
        out[path] = {"module": type(model).__module__, "cls": type(model).__name__, "no_flag": no_flag,
                     "logits": logits, "greedy": greedy, "static": static}
        if os.path.exists(os.path.join(path, "tokenizer.json")):  # the README's way: no prompt, no custom code
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            out[path]["tokens"] = tok("Once upon a time").input_ids
    torch.save(out, sys.argv[2])
    """
)


# ------------------------------------------------------------------------------------------ uniform / padded
def test_uniform_loads_as_the_plain_architecture(tmp_path):
    from transformers import LlamaForCausalLM

    model = _pruned("llama", 0.3, "uniform")
    sizes = _sizes(model)
    assert len(set(sizes)) == 1 and 64 % sizes[0][0] == 0, sizes
    ref = _logits(model)
    res = save_pruned_model(model, tmp_path / "uniform")
    assert res.format == "uniform"
    assert not list(res.path.glob("*.py"))
    cfg = json.loads((res.path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "per_layer_config" not in cfg and "auto_map" not in cfg
    assert cfg["head_dim"] == 8 and cfg["pruning_config"]["export_format"] == "uniform"
    loaded = _load(res.path)
    assert type(loaded) is LlamaForCausalLM and loaded.config.model_type == "llama"
    assert (loaded.config.num_attention_heads, loaded.config.num_key_value_heads,
            loaded.config.intermediate_size) == sizes[0]
    assert_same_function(_logits(loaded), ref)
    assert torch.equal(_greedy(loaded), _greedy(model))
    # the same model through the pruner's save
    res2 = SlimGPTPruner(SlimGPTConfig(dataset=None)).save(model, tmp_path / "via-pruner", export_format="uniform")
    assert res2.format == "uniform"


def test_uniform_rejected_by_llama_config_falls_back(tmp_path):
    model = _pruned("llama", 0.25, "uniform")  # 6 heads: 64 % 6 != 0, rejected by LlamaConfig (transformers >= 5.4)
    sizes = _sizes(model)
    assert len(set(sizes)) == 1 and 64 % sizes[0][0] != 0, sizes
    ref = _logits(model)
    res = save_pruned_model(model, tmp_path / "auto")
    assert res.format == "per_layer" and "rejects" in res.reason
    assert_same_function(_logits(_load(res.path)), ref)
    with pytest.raises(ExportError, match="rejects a plain 'llama' config"):
        save_pruned_model(model, tmp_path / "uniform", export_format="uniform")
    assert not (tmp_path / "uniform").exists()
    # padded: the head count is rounded up to one that divides hidden_size (6/3 -> 8/4)
    res = save_pruned_model(model, tmp_path / "padded", export_format="padded")
    loaded = _load(res.path)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert (loaded.config.num_attention_heads, loaded.config.num_key_value_heads) == (8, 4)
    assert_same_function(_logits(loaded), ref)


def test_uniform_refuses_different_layers(tmp_path):
    model = _pruned("llama")
    with pytest.raises(ExportError, match="same sizes in every layer"):
        save_pruned_model(model, tmp_path / "u", export_format="uniform")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_padded_export_is_exact(family, tmp_path):
    model = _pruned(family)
    sizes = _sizes(model)
    ref = _logits(model)
    res = save_pruned_model(model, tmp_path / "padded", export_format="padded")
    assert res.format == "padded" and not list(res.path.glob("*.py"))
    loaded = _load(res.path)
    assert type(loaded).__name__ == model.config.pruning_config["base_architectures"][0]
    assert loaded.config.model_type == family
    c = loaded.config
    max_heads, max_kv, max_ch = (max(s[i] for s in sizes) for i in range(3))
    max_rep = max(h // kv for h, kv, _ in sizes)
    # every layer padded to the most KV heads and the most query heads per KV head of any layer: at least the most
    # query heads of any layer (more when those two maxima come from different layers, e.g. (6, 3) and (4, 4))
    heads = max_kv * max_rep
    assert c.intermediate_size == max_ch and c.num_key_value_heads == max_kv
    assert c.num_attention_heads == heads >= max_heads
    assert all(s == (heads, max_kv, max_ch) for s in _sizes(loaded))
    assert res.layers[0] == {"num_attention_heads": heads, "num_key_value_heads": max_kv,
                             "intermediate_size": max_ch}
    assert_same_function(_logits(loaded), ref)
    assert torch.equal(_greedy(loaded), _greedy(model))
    assert json.loads((res.path / "config.json").read_text())["pruning_config"]["layers"][2]["intermediate_size"] \
        == sizes[2][2]


# ------------------------------------------------------------------------------------------ sizes
def test_checkpoint_size_follows_the_parameters_removed(tmp_path):
    dense = _tiny("llama")
    dense_params = sum(p.numel() for p in dense.parameters())
    dense.save_pretrained(tmp_path / "dense")
    dense_bytes = sum(p.stat().st_size for p in (tmp_path / "dense").glob("*.safetensors"))
    model = _pruned("llama", 0.5)
    res = save_pruned_model(model, tmp_path / "pruned")
    pruned_params = sum(p.numel() for p in model.parameters())
    assert res.num_parameters == pruned_params < dense_params
    assert res.weights_bytes < dense_bytes
    # fp32: 4 bytes a parameter, plus a small safetensors header
    assert res.weights_bytes / dense_bytes == pytest.approx(pruned_params / dense_params, abs=0.01)
    assert 4 * pruned_params <= res.weights_bytes < 4 * pruned_params + 16_384
    # every saved file is as readable as any file the user creates (the weights were written owner-only before)
    mask = os.umask(0)
    os.umask(mask)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "pruned").iterdir() if f.is_file()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~mask}


def _stored_params(folder: Path) -> tuple[int, set]:
    """(elements of every tensor in the folder's safetensors files, their names)."""
    from safetensors import safe_open

    n, names = 0, set()
    for f in folder.glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            for k in st.keys():
                n += st.get_tensor(k).numel()
                names.add(k)
    return n, names


@pytest.mark.parametrize("export_format, schedule", [("per_layer", "log_increase"), ("uniform", "uniform"),
                                                     ("padded", "log_increase")])
def test_tied_embeddings_are_counted_once(export_format, schedule, tmp_path):
    from huggingface_hub import ModelCard

    model = _pruned("qwen2", 0.3, schedule)  # tie_word_embeddings=True
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ref = _logits(model)
    res = save_pruned_model(model, tmp_path / export_format, export_format=export_format)
    loaded = _load(res.path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # still tied after loading
    stored, names = _stored_params(res.path)
    assert "lm_head.weight" not in names
    unique = sum(p.numel() for p in loaded.parameters())  # parameters() yields a tied tensor once
    assert res.num_parameters == stored == unique
    if export_format != "padded":  # padding adds zeros; the other formats hold exactly the pruned model
        assert unique == sum(p.numel() for p in model.parameters())
    assert f"parameters in this checkpoint: {unique:,}" in ModelCard.load(res.path / "README.md").text
    assert_same_function(_logits(loaded), ref)


# ------------------------------------------------------------------------------------------ atomic writes
def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = _pruned("llama")
    target = tmp_path / "ckpt"
    save_pruned_model(model, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pruned_model(model, target)
    assert _leftovers(tmp_path, "ckpt") == []

    original = type(model).save_pretrained

    def broken_save(self, save_directory, **kw):
        original(self, save_directory, **kw)  # writes config, code and weights into the temporary folder...
        assert Path(save_directory).parent == target.parent and Path(save_directory) != target
        raise OSError("disk full (injected)")  # ...and then fails

    monkeypatch.setattr(type(model), "save_pretrained", broken_save)
    with pytest.raises(OSError, match="injected"):
        save_pruned_model(model, target, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert _leftovers(tmp_path, "ckpt") == []
    with pytest.raises(OSError, match="injected"):
        save_pruned_model(model, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() and _leftovers(tmp_path, "fresh") == []
    monkeypatch.undo()

    # overwrite=True replaces the content (here with another format) and cleans up
    res = save_pruned_model(model, target, overwrite=True, export_format="padded")
    assert res.format == "padded" and not list(target.glob("*.py"))
    assert _leftovers(tmp_path, "ckpt") == []
    # an existing empty folder is fine without overwrite
    (tmp_path / "empty").mkdir()
    assert save_pruned_model(model, tmp_path / "empty").path == (tmp_path / "empty").absolute()


def test_unpruned_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="pruning record"):
        save_pruned_model(_tiny("llama"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ biases
def test_output_biases_are_carried_by_the_per_layer_format(tmp_path):
    """SlimLLM-style bias compensation: o_proj/down_proj biases on some layers -> pruned_out_bias."""
    model = _pruned("llama", 0.3, "uniform")  # uniform sizes: only the biases stop a plain export
    blocks = model.model.layers
    g = torch.Generator().manual_seed(3)
    blocks[1].self_attn.o_proj.bias = torch.nn.Parameter(torch.randn(64, generator=g) * 0.1)
    blocks[2].mlp.down_proj.bias = torch.nn.Parameter(torch.randn(64, generator=g) * 0.1)
    ref = _logits(model)
    to_pruned_model(model, get_adapter(model), PruningRecord.of(model.config))  # re-record the layout
    assert model.config.pruned_out_bias is True
    assert all(b.self_attn.o_proj.bias is not None and b.mlp.down_proj.bias is not None for b in blocks)
    assert_same_function(_logits(model), ref)  # zeros were added elsewhere

    res = save_pruned_model(model, tmp_path / "bias", export_format="per_layer")
    assert json.loads((res.path / "config.json").read_text())["pruned_out_bias"] is True
    loaded = _load(res.path)
    assert loaded.model.layers[0].self_attn.o_proj.bias is not None
    assert_same_function(_logits(loaded), ref)
    # Llama's attention_bias / mlp_bias flags hold them in a plain checkpoint (q/k/v/gate/up biases zero)
    res = save_pruned_model(model, tmp_path / "plain")
    assert res.format == "uniform" and "attention_bias" in res.reason
    cfg = json.loads((res.path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["attention_bias"] is True and cfg["mlp_bias"] is True
    loaded = _load(res.path)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert float(loaded.model.layers[1].self_attn.q_proj.bias.detach().abs().max()) == 0
    assert_same_function(_logits(loaded), ref)
    with pytest.raises(ExportError, match="bias"):
        save_pruned_model(model, tmp_path / "padded", export_format="padded")
    # a family without such flags (Mistral) still refuses the plain formats
    mis = _pruned("mistral", 0.3, "uniform")
    mis.model.layers[0].mlp.down_proj.bias = torch.nn.Parameter(torch.full((64,), 0.1))
    to_pruned_model(mis, get_adapter(mis), PruningRecord.of(mis.config))
    with pytest.raises(ExportError, match="bias"):
        save_pruned_model(mis, tmp_path / "mis", export_format="uniform")
    assert save_pruned_model(mis, tmp_path / "mis2").format == "per_layer"


# ------------------------------------------------------------------------------------------ card and hub
def test_model_card(tmp_path):
    from huggingface_hub import ModelCard

    model = _pruned("llama")
    sizes = _sizes(model)
    res = save_pruned_model(model, tmp_path / "card", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                            eval_results={"wikitext2_ppl": 12.3456, "arc_easy": 0.61})
    card = ModelCard.load(res.path / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"pruned", "slimgpt", "structured-pruning"} <= set(meta["tags"])
    assert meta["library_name"] == "transformers"
    text = card.text
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text and "log_increase" in text
    for i, (h, kv, ch) in enumerate(sizes):
        assert f"| {i} | {h} | {kv} | {ch} |" in text
    assert "wikitext2_ppl" in text and "12.35" in text and "num_samples" in text
    # without a Hub id the local name is only mentioned in the text, not in the metadata
    model.config.name_or_path = str(tmp_path / "some-local-dir")
    res = save_pruned_model(model, tmp_path / "card2")
    card = ModelCard.load(res.path / "README.md")
    assert "base_model" not in card.data.to_dict() and "some-local-dir" in card.text
    assert not (save_pruned_model(model, tmp_path / "nocard", model_card=False).path / "README.md").exists()


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    calls = {}

    def fake_create_repo(self, repo_id, **kw):
        calls["create"] = (repo_id, kw)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_upload_folder(self, *, repo_id, folder_path, **kw):
        calls["upload"] = (repo_id, folder_path, sorted(os.listdir(folder_path)), kw)
        return None

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    res = save_pruned_model(_pruned("llama"), tmp_path / "hub", push_to_hub=True, repo_id="me/tiny-slim",
                            private=True, token="hf_fake")
    assert calls["create"][0] == "me/tiny-slim" and calls["create"][1]["private"] is True
    repo_id, folder, files, kw = calls["upload"]
    assert repo_id == "me/tiny-slim" and Path(folder) == res.path
    assert {"config.json", "model.safetensors", "README.md", "modeling_slimgpt.py"} <= set(files)
    assert res.repo_id == "me/tiny-slim"


# ------------------------------------------------------------------------------------------ remote code (the run)
# (here, after the tiny-model tests: they run while the process started by _remote_run imports and loads)
@pytest.fixture(scope="module", autouse=True)
def _remote_run(request, tmp_path_factory):
    """The process of ``test_remote_code_without_the_package``, started when this module starts (if that test is
    selected): four per-layer checkpoints are saved here, then a Python without the package loads them (mostly
    import time, on one core) while the module's tiny-model tests run beside it; that test (just before the SmolLM2
    ones) waits for it. ``(folder, paths, the in-memory models' (logits, greedy) by path, the tokenizer's ids or
    None, process)``."""
    if not selected(request, "test_remote_code_without_the_package"):
        yield None
        return
    tmp_path = tmp_path_factory.mktemp("remote-code")
    families = ("llama", "qwen3", "phi3", "opt")  # phi3: per-layer config view; opt: its own attention class
    refs, paths, want_tokens = {}, [], None
    for fam in families:
        model = _pruned(fam)
        tok = tok512_tokenizer() if fam == "llama" and have_shared(STORIES_BIN) else None
        p = save_pruned_model(model, tmp_path / f"{fam}-slim", tokenizer=tok).path
        if tok is not None:
            want_tokens = tok("Once upon a time").input_ids
        refs[str(p)] = (_logits(model), _greedy(model))
        paths.append(str(p))
    torch.save(PROMPT, tmp_path / "ids.pt")
    script = tmp_path / "remote_load.py"
    script.write_text(_REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:  # a full pipe would block it
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt"), *paths],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        yield tmp_path, paths, refs, want_tokens, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_remote_code_without_the_package(_remote_run):
    tmp_path, paths, refs, want_tokens, proc = _remote_run
    proc.wait(timeout=300)
    assert proc.returncode == 0, (tmp_path / "stdout").read_text()[-3000:] + (tmp_path / "stderr").read_text()[-3000:]
    out = torch.load(tmp_path / "out.pt")
    for p in paths:
        r = out[p]
        assert r["module"].startswith("transformers_modules") and r["module"].endswith(
            ".modeling_slimgpt")
        assert "trust_remote_code" in r["no_flag"], r["no_flag"]
        ref_logits, ref_greedy = refs[p]
        assert_same_function(r["logits"], ref_logits)
        assert torch.equal(r["greedy"], ref_greedy) and torch.equal(r["static"], ref_greedy)
    if have_shared(STORIES_BIN):  # the tokenizer of a per-layer checkpoint loads without the package or a prompt
        assert out[paths[0]]["tokens"] == want_tokens


# ------------------------------------------------------------------------------------------ real model
def test_smollm2_20_percent_round_trip(smollm2_pruned20, tmp_path):
    model, tok, _ = smollm2_pruned20  # pruned once for the session (its perplexity is tested in test_pruner)
    assert type(model).__name__ == "SlimGPTLlamaForCausalLM"
    assert len({tuple(s.values()) for s in model.config.layer_sizes()}) > 1
    assert getattr(model, "hf_quantizer", None) is None  # the (dequantized) GGUF quantizer was dropped
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    ref = _logits(model, ids)
    ref_greedy = _greedy(model, ids=ids, n=8)
    rec = PruningRecord.of(model.config)
    assert (rec.source_dtype, rec.compute_dtype) == ("bfloat16", "float32")  # a GGUF source: saved as bf16 by default
    res = save_pruned_model(model, tmp_path / "smollm2-slim", tokenizer=tok, dtype="float32")  # the float32 round trip
    assert res.format == "per_layer" and res.dtype == "float32"
    stored, names = _stored_params(res.path)  # SmolLM2 ties its embeddings: stored and counted once
    assert res.num_parameters == stored == sum(p.numel() for p in model.parameters()) and "lm_head.weight" not in names
    assert any(n.startswith("tokenizer") for n in res.files)
    loaded = _load(res.path)
    assert_same_function(_logits(loaded, ids), ref)
    assert torch.equal(_greedy(loaded, ids=ids, n=8), ref_greedy)


def test_smollm2_20_percent_saves_bf16_by_default(smollm2_pruned20, tmp_path):
    """The default save of a model pruned from the GGUF (in float32) is bf16: half the float32 checkpoint's bytes."""
    from optimum_slimgpt.saving import checkpoint_dtype

    model, tok, _ = smollm2_pruned20
    res = save_pruned_model(model, tmp_path / "bf16")
    assert res.dtype == "bfloat16" and checkpoint_dtype(res.path) == "bfloat16"
    assert json.loads((res.path / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(model.parameters()).dtype == torch.float32  # the model in memory stays as it was
    params = sum(p.numel() for p in model.parameters())
    assert 2 * params <= res.weights_bytes < 2 * params + 2**20  # 2 bytes a parameter (+ the headers)


# ------------------------------------------------------------------------------------------ saved dtype
def _bf16_source(folder: Path, vocab: int = 96) -> Path:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    return folder


def _safetensors_dtypes(folder: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            out.update({k: st.get_tensor(k).dtype for k in st.keys()})
    return out


@pytest.mark.parametrize("dtype, fmt, want", [
    ("auto", "per_layer", torch.bfloat16), (None, "per_layer", torch.float32), ("float16", "per_layer", torch.float16),
    (torch.float32, "per_layer", torch.float32), ("auto", "padded", torch.bfloat16)])
def test_the_save_writes_the_source_dtype_unless_told(dtype, fmt, want, tmp_path):
    """A bf16 checkpoint loaded and pruned in float32: ``dtype="auto"`` saves bf16 (the record knows the source),
    ``None`` the float32 it was pruned in, an explicit dtype that one; the config says so, the tied head is stored
    once, the model in memory is not touched, and the reloaded per-layer model computes what the in-memory one does
    in that dtype, exactly."""
    import copy

    from transformers import AutoModelForCausalLM

    src = _bf16_source(tmp_path / "src")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    pruner = SlimGPTPruner(SlimGPTConfig(pruning_ratio=0.3, dataset=None, batch_size=4))
    pruner.prune_model(model, calibration=CALIB % 96)
    rec = PruningRecord.of(model.config)
    assert (rec.source_dtype, rec.compute_dtype) == ("bfloat16", "float32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = pruner.save(model, tmp_path / "out", export_format=fmt, dtype=dtype)
    assert res.dtype == str(want).removeprefix("torch.")
    stored = _safetensors_dtypes(res.path)
    assert set(stored.values()) == {want} and "lm_head.weight" not in stored
    assert json.loads((res.path / "config.json").read_text())["dtype"] == res.dtype
    after = model.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())
    loaded = _load(res.path)  # dtype "auto": the config's
    assert {p.dtype for p in loaded.parameters()} == {want}
    ids = PROMPT % 96
    if fmt == "per_layer":
        cast = copy.deepcopy(model)
        for p in cast.parameters():  # the weights cast, as loading them does (the rotary buffers stay float32)
            p.data = p.data.to(want)
        sd = loaded.state_dict()
        assert all(torch.equal(sd[k], v) for k, v in cast.state_dict().items())
        assert torch.equal(_logits(loaded, ids), _logits(cast, ids))
    card = (res.path / "README.md").read_text()
    note = "the source checkpoint's dtype; pruned in float32" if want == torch.bfloat16 else \
        "the source was bfloat16" + ("" if want == torch.float32 else "; pruned in float32")
    assert f"* weights: {res.dtype} ({note})" in card


def test_source_dtype_is_read_without_loading_anything(tmp_path):
    from optimum_slimgpt.saving import parse_dtype, source_dtype

    model = _tiny("llama")
    assert source_dtype(model) is None  # built in memory: nothing says
    src = _bf16_source(tmp_path / "src")
    model.config.name_or_path = str(src)
    assert source_dtype(model) == torch.bfloat16  # its config.json
    assert parse_dtype("bf16") == torch.bfloat16 and parse_dtype(None) is None
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        parse_dtype("float8")
    with pytest.raises(ValueError, match="unknown dtype"):
        save_pruned_model(_pruned("llama"), tmp_path / "x", dtype="int8")
    assert not (tmp_path / "x").exists()
