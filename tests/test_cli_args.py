"""The command line generated from the config dataclasses (``optimum_slimgpt.cli_args``).

Every field of every registered method config, of ``RecoveryConfig`` and of ``GGUFExportOptions`` has its help
in the field's metadata and its entry in the class docstring; it is listed by ``--help`` (of the right
``--method``) with its default, and each of its flags (aliases included) sets it. A method config registered
here, in the test, gets its flags with no edit of the CLI. Every flag name of the hand-written CLI still parses.
``prune --config <a checkpoint's pruning record>`` repeats that run bit for bit.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from dataclasses import dataclass, field

import pytest
import torch

from optimum_slimgpt import GGUFExportOptions, PruningConfig, RecoveryConfig, SlimLLMConfig, register_method
from optimum_slimgpt import cli
from optimum_slimgpt.cli_args import config_fields, field_default, option_strings, parse_value, show_default
from optimum_slimgpt.config import registered_configs
from optimum_slimgpt.methods import PruningMethod, unregister_method

from helpers import TINYSTORIES_TXT, call_cli, have_shared

BASE = ["--model", "m", "--output", "o"]


# ------------------------------------------------------------------------------------------- a toy method
@dataclass
class ToyFlagsConfig(PruningConfig):
    """A third-party method's config, declared the documented way and nothing else.

    Args:
        alpha: The toy knob.
        sharpen: A toy switch.
        levels: A toy grid of levels.
    """

    method_name = "toy_flags"
    label = "toy"
    alpha: float = field(default=1.5, metadata={"help": "the toy knob"})
    sharpen: bool = field(default=False, metadata={"help": "a toy switch"})
    levels: list[float] = field(default_factory=lambda: [0.1, 0.5], metadata={"help": "a toy grid of levels"})


class ToyFlagsMethod(PruningMethod):  # never run: only its config's flags are tested
    pass


@pytest.fixture()
def toy_method():
    register_method(ToyFlagsConfig)(ToyFlagsMethod)
    yield ToyFlagsConfig
    unregister_method(ToyFlagsConfig)


# ------------------------------------------------------------------------------------------- helpers
def _hints(cls) -> dict:
    import typing

    return typing.get_type_hints(cls)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _owner(cls, name: str) -> type:
    """The class of ``cls``'s MRO that declares field ``name``."""
    return next(k for k in cls.__mro__ if name in k.__dict__.get("__annotations__", {}))


def _documented(cls) -> set[str]:
    """The names of ``cls``'s own docstring's ``Args:`` entries (``a / b:`` names two)."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    return {n.strip() for m in re.findall(r"^    (\w+(?: / \w+)*):", section, flags=re.M) for n in m.split("/")}


def _candidates(cls, f) -> list[str]:
    """Command-line values to try for field ``f`` (the test keeps the first that the config accepts)."""
    tp, choices = _hints(cls)[f.name], f.metadata.get("choices")
    if choices:
        return [str(c) for c in choices]
    text = str(tp)
    if tp is int or text in ("typing.Optional[int]", "typing.Union[int, str]"):  # Union: channel_multiple
        return ["2", "3", "5", "64", "1"]
    if text == "typing.Union[int, str]":  # an int or a keyword (channel_multiple: 'auto'): try the ints first
        return ["2", "3", "5", "64", "1", "c4"]
    if tp is float or text == "typing.Optional[float]":
        return ["0.5", "0.25", "2.0", "3.0", "0.05"]
    if text == "list[int]":  # search_tokens (cheapest first), search_survivors (one fewer, non-increasing)
        return ["2048,4096,8192", "3,1"]
    if "list" in text:
        return ["0.2,0.3", "q_proj,v_proj", "tensorboard,wandb"]
    if "dict" in text:
        return ['{"note": 1}']
    return ["c4", "cpu", "validation", "content", "Q8_0"]


def _command(cls) -> tuple[list[str], callable]:
    """(argv before the flag, how the parsed arguments become the config) for the command that builds ``cls``."""
    if cls is RecoveryConfig:
        return ["recover", *BASE], cli._recover_config_from_args
    if cls is GGUFExportOptions:
        return ["export", *BASE], lambda args: args.export_flags.build(GGUFExportOptions, args)
    return ["prune", *BASE, "--method", cls.method_name], cli._config_from_args


_PARSERS: dict = {}


def _parse(argv: list[str]):
    """Parsed by one parser per set of registered methods (the parser depends on ``argv`` only for ``--help``)."""
    key = tuple(registered_configs())
    if key not in _PARSERS:
        _PARSERS[key] = cli.build_parser()
    return _PARSERS[key].parse_args(argv)


def _walk(cls, argv_for, build, prefix: str = "") -> list[str]:
    """Every flag (main name and aliases) of every field of ``cls`` sets that field to a value other than its
    default; ``argv_for(name)``: the command line before the flag. Returns the fields checked."""
    checked = []
    hints = _hints(cls)
    for f in config_fields(cls):
        default, argv = field_default(f), argv_for(f.name)
        for opt in option_strings(f, prefix):
            if hints[f.name] is bool:
                value, extra = not default, [opt if default is False else "--no-" + opt[2:]]
            else:
                value = extra = None
                errors = []
                for raw in _candidates(cls, f):
                    try:
                        want = parse_value(hints[f.name], raw)
                        if want == default:
                            continue
                        build(_parse(argv + [opt, raw]))
                    except (ValueError, TypeError, ImportError) as e:  # refused by the config: try another value
                        errors.append(f"{raw}: {e}")
                        continue
                    value, extra = want, [opt, raw]
                    break
                assert extra, f"{cls.__name__}.{f.name} {opt}: no value was accepted: {errors}"
            cfg = build(_parse(argv + extra))
            assert getattr(cfg, f.name) == value and value != default, (cls.__name__, f.name, extra)
        checked.append(f.name)
    return checked


# ------------------------------------------------------------------------------------------- the tests
def _configs():
    return [*registered_configs(), RecoveryConfig, GGUFExportOptions]


def test_every_field_has_one_line_help_and_a_docstring_entry(toy_method):
    for cls in _configs():
        for f in config_fields(cls):
            help_text = f.metadata.get("help", "")
            assert help_text and "\n" not in help_text, f"{cls.__name__}.{f.name}: no one-line metadata help"
            assert f.name in _documented(_owner(cls, f.name)), f"{_owner(cls, f.name).__name__}.{f.name} undocumented"
    for cls in (PruningConfig, *registered_configs(), RecoveryConfig, GGUFExportOptions):  # no stale entries
        assert _documented(cls) <= {f.name for f in dataclasses.fields(cls)}, (cls, _documented(cls))


def test_help_lists_every_field_of_the_chosen_method_with_its_default(toy_method, capsys):
    for cls in _configs():
        argv, _ = _command(cls)
        rc, out, err = call_cli(capsys, *argv[:1], *argv[5:], "--help")
        assert rc == 0, err
        text = _norm(out)
        for f in config_fields(cls):
            for opt in option_strings(f):
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), (cls.__name__, opt)
            shown = show_default(field_default(f))
            assert re.search(re.escape(_norm(f.metadata["help"])) + r"(; one of: [^()]*)? \(default: "
                             + re.escape(shown) + r"[^)]*\)", text), (cls.__name__, f.name, shown)
        if argv[0] == "prune":  # the other methods' own options are not listed under this --method
            mine = {f.name for f in config_fields(cls)}
            for other in registered_configs():
                for f in config_fields(other):
                    if f.name not in mine:
                        assert option_strings(f)[0] not in text.split(), (cls.__name__, f.name)
            for f in config_fields(RecoveryConfig):  # and prune --recover-* lists RecoveryConfig
                assert option_strings(f, "recover-")[0] in text and _norm(f.metadata["help"]) in text


def test_every_flag_reaches_its_config(toy_method):
    for cls in _configs():
        argv, build = _command(cls)
        assert _walk(cls, lambda name: argv, build) == [f.name for f in config_fields(cls)]
    # prune --recover-*: RecoveryConfig again, with the prefix, behind --recover-steps N (or --recover-epochs)
    assert _walk(RecoveryConfig, lambda name: ["prune", *BASE] + ([] if name in ("max_steps", "num_epochs") else
                                                                  ["--recover-steps", "7"]),
                 lambda args: cli._prune_recovery_config(args, cli._config_from_args(args)),
                 prefix="recover-") == [f.name for f in config_fields(RecoveryConfig)]


def test_a_method_registered_here_gets_its_flags(toy_method, capsys):
    rc, out, _ = call_cli(capsys, "prune", "--method", "toy_flags", "--help")
    text = _norm(out)
    assert rc == 0 and "options of --method toy_flags (ToyFlagsConfig)" in text
    assert "--alpha X the toy knob (default: 1.5)" in text
    assert "--sharpen, --no-sharpen a toy switch (default: False)" in text
    assert "--levels A,B,... a toy grid of levels (default: 0.1,0.5)" in text
    rc, out, _ = call_cli(capsys, "prune", "--help")  # the default method's help does not list them
    assert rc == 0 and "--alpha" not in out and "--damp-percent" in out
    cfg = cli._config_from_args(_parse(["prune", *BASE, "--method", "toy_flags", "--alpha", "2.5", "--sharpen",
                                        "--levels", "0.2,0.4", "--ratio", "0.3"]))
    assert cfg == ToyFlagsConfig(alpha=2.5, sharpen=True, levels=[0.2, 0.4], pruning_ratio=0.3)
    rc, _, err = call_cli(capsys, "prune", *BASE, "--alpha", "2")
    assert rc == 2 and err.strip() == "error: --alpha does not apply to --method slimgpt"


#: every flag of the hand-written CLI before the flags were generated (``git show 2e6dc5b:optimum_slimgpt/cli.py``)
OLD_FLAGS = {
    "prune": ["--model", "--gguf-file", "--output", "--overwrite", "--ratio", "--method", "--schedule", "--dataset",
              "--split", "--samples", "--seqlen", "--batch-size", "--seed", "--device", "--dtype", "--damp",
              "--channel-multiple", "--no-heads", "--no-ffn", "--no-compensate", "--bias-compensation",
              "--no-bias-compensation", "--low-memory", "--resume", "--format", "--recover-steps", "--recover-loss",
              "--recover-lr", "--recover-lora-r", "--recover-dataset", "--recover-seqlen"],
    "recover": ["--model", "--gguf-file", "--teacher", "--teacher-gguf-file", "--output", "--overwrite", "--dataset",
                "--split", "--samples", "--seqlen", "--steps", "--epochs", "--batch-size", "--grad-accum", "--lr",
                "--scheduler", "--warmup-steps", "--loss", "--temperature", "--lora-r", "--target-modules",
                "--gradient-checkpointing", "--train-dtype", "--dtype", "--teacher-dtype", "--freeze-embeddings",
                "--seed", "--device", "--teacher-device", "--logging-steps", "--report-to", "--format"],
    "eval": ["--model", "--gguf-file", "--wikitext-dir", "--text-file", "--seqlen", "--max-tokens", "--batch-size",
             "--tasks", "--limit", "--data-dir", "--device", "--dtype", "--json"],
    "info": ["--model"],
    "export": ["--model", "--format", "--outtype", "--quantize", "--arch", "--output", "--overwrite", "--threads",
               "--tokenizer-pre"],
    "demo": ["--output", "--overwrite", "--ratio", "--samples", "--seqlen"],
}

#: the old config flags and what they set: (argv, config, field, value)
OLD_MEANINGS = [
    (["--ratio", "0.3"], "prune", "pruning_ratio", 0.3), (["--schedule", "uniform"], "prune", "schedule", "uniform"),
    (["--schedule", "0.1,0.2"], "prune", "schedule", [0.1, 0.2]), (["--dataset", "c4"], "prune", "dataset", "c4"),
    (["--split", "validation"], "prune", "dataset_split", "validation"), (["--samples", "16"], "prune", "num_samples", 16),
    (["--seqlen", "64"], "prune", "seqlen", 64), (["--batch-size", "2"], "prune", "batch_size", 2),
    (["--seed", "3"], "prune", "seed", 3), (["--device", "cpu"], "prune", "device", "cpu"),
    (["--damp", "0.05"], "prune", "damp_percent", 0.05), (["--channel-multiple", "8"], "prune", "channel_multiple", 8),
    (["--no-heads"], "prune", "prune_heads", False), (["--no-ffn"], "prune", "prune_ffn", False),
    (["--no-compensate"], "prune", "compensate", False), (["--bias-compensation"], "prune", "bias_compensation", True),
    (["--method", "flap", "--no-bias-compensation"], "prune", "bias_compensation", False),
    (["--recover-steps", "5"], "prune-recover", "max_steps", 5),
    (["--recover-steps", "5", "--recover-loss", "lm"], "prune-recover", "loss", "lm"),
    (["--recover-steps", "5", "--recover-lr", "0.001"], "prune-recover", "learning_rate", 0.001),
    (["--recover-steps", "5", "--recover-lora-r", "4"], "prune-recover", "lora_r", 4),
    (["--recover-steps", "5", "--recover-dataset", "c4"], "prune-recover", "dataset", "c4"),
    (["--recover-steps", "5", "--recover-seqlen", "64"], "prune-recover", "seqlen", 64),
    (["--dataset", "c4"], "recover", "dataset", "c4"), (["--split", "validation"], "recover", "dataset_split", "validation"),
    (["--samples", "8"], "recover", "num_samples", 8), (["--seqlen", "64"], "recover", "seqlen", 64),
    (["--steps", "5"], "recover", "max_steps", 5), (["--epochs", "2"], "recover", "num_epochs", 2.0),
    (["--batch-size", "2"], "recover", "batch_size", 2), (["--grad-accum", "2"], "recover", "gradient_accumulation_steps", 2),
    (["--lr", "0.001"], "recover", "learning_rate", 0.001), (["--scheduler", "linear"], "recover", "lr_scheduler_type", "linear"),
    (["--warmup-steps", "2"], "recover", "warmup_steps", 2), (["--loss", "lm"], "recover", "loss", "lm"),
    (["--temperature", "2"], "recover", "temperature", 2.0), (["--lora-r", "4"], "recover", "lora_r", 4),
    (["--target-modules", "q_proj,v_proj"], "recover", "target_modules", ["q_proj", "v_proj"]),
    (["--gradient-checkpointing"], "recover", "gradient_checkpointing", True),
    (["--train-dtype", "bfloat16"], "recover", "dtype", "bfloat16"),
    (["--freeze-embeddings"], "recover", "freeze_embeddings", True), (["--seed", "3"], "recover", "seed", 3),
    (["--logging-steps", "5"], "recover", "logging_steps", 5), (["--report-to", "tensorboard"], "recover", "report_to", "tensorboard"),
    (["--outtype", "f16"], "export", "outtype", "f16"), (["--arch", "deci"], "export", "arch", "deci"),
    (["--threads", "2"], "export", "threads", 2), (["--tokenizer-pre", "llama-bpe"], "export", "tokenizer_pre", "llama-bpe"),
]


def test_every_old_flag_keeps_its_name_and_meaning():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction)).choices
    for command, flags in OLD_FLAGS.items():
        missing = [f for f in flags if f not in commands[command]._option_string_actions]
        assert not missing, (command, missing)
    assert {"-v", "--verbose"} <= set(parser._option_string_actions)
    build = {"prune": cli._config_from_args, "recover": cli._recover_config_from_args,
             "prune-recover": lambda a: cli._prune_recovery_config(a, cli._config_from_args(a)),
             "export": lambda a: a.export_flags.build(GGUFExportOptions, a)}
    for argv, which, name, value in OLD_MEANINGS:
        cfg = build[which](_parse([which.split("-")[0], *BASE, *argv]))
        assert getattr(cfg, name) == value, (argv, getattr(cfg, name))
    # --epochs alone replaces the default step count; prune without --recover-steps recovers nothing
    assert _parse_recover(["--epochs", "2"]).max_steps is None
    assert cli._prune_recovery_config(_parse(["prune", *BASE]), PruningConfig.for_method("slimgpt")) is None


def _parse_recover(extra):
    return cli._recover_config_from_args(_parse(["recover", *BASE, *extra]))


@pytest.mark.parametrize("argv, message", [
    (["prune", *BASE, "--ratio", "1.5"], "error: --ratio: pruning_ratio must be a number with 0 <= pruning_ratio < 1"),
    (["prune", *BASE, "--pruning-ratio", "-1"], "error: --pruning-ratio: pruning_ratio must be a number"),
    (["prune", *BASE, "--samples", "many"], "error: --samples 'many': not an integer"),
    (["prune", *BASE, "--schedule", "0.1,x"], "error: --schedule '0.1,x': a list must be comma-separated numbers"),
    (["prune", *BASE, "--meta", "[1]"], "error: --meta '[1]': not a JSON object"),
    (["prune", *BASE, "--no-heads", "--no-ffn"], "error: --ffn/--no-ffn: prune_heads and prune_ffn are both False"),
    (["prune", *BASE, "--method", "slimllm", "--no-compensate"],
     "error: --compensate/--no-compensate does not apply to --method slimllm"),
    (["prune", *BASE, "--method", "nosuch"], "error: unknown pruning method 'nosuch'; registered: "),
    (["prune", *BASE, "--recover-lora-r", "4"], "error: --recover-lora-r needs --recover-steps N"),
    (["prune", *BASE, "--recover-teacher-dtype", "bf16"], "error: --recover-teacher-dtype needs --recover-steps N"),
    (["prune", *BASE, "--recover-steps", "2", "--recover-loss", "mse"], "error: --recover-loss: loss must be one of"),
    (["recover", *BASE, "--steps", "2", "--epochs", "1"], "error: --epochs: give max_steps or num_epochs, not both"),
    (["recover", *BASE, "--train-dtype", "fp8"], "error: --train-dtype: dtype must be one of"),
    (["recover", *BASE, "--teacher-dtype", "int3"], "error: argument --teacher-dtype: unknown dtype 'int3'"),
    (["export", *BASE, "--outtype", "f8"], "error: --outtype: outtype must be one of"),
    (["export", *BASE, "--threads", "0"], "error: --threads: threads must be None or a positive int"),
    (["prune", "--ratio", "0.2"], "error: the following arguments are required: --model, --output"),
    (["prune", *BASE, "--frobnicate"], "error: unrecognized arguments: --frobnicate"),
])
def test_bad_values_end_in_one_error_line_naming_the_flag(argv, message, capsys):
    rc, out, err = call_cli(capsys, *argv)
    assert rc == 2 and out == "", (rc, out)
    assert err.count("\n") == 1 and err.startswith(message), err


def test_parse_value_follows_the_annotation():
    from typing import Any, Literal, Optional, Union

    assert parse_value(int, "3") == 3 and parse_value(float, "1e-3") == 1e-3 and parse_value(str, "x") == "x"
    assert parse_value(Optional[int], "none") is None and parse_value(Optional[int], "4") == 4
    assert parse_value(Union[str, list[float]], "uniform") == "uniform"
    assert parse_value(Union[str, list[float]], "0.1, 0.2") == [0.1, 0.2]
    assert parse_value(Union[str, list, None], "q,v") == ["q", "v"] and parse_value(Union[str, list, None], "a") == "a"
    assert parse_value(list[int], "1,2,3") == [1, 2, 3] and parse_value(tuple[int, ...], "1,2") == (1, 2)
    assert parse_value(dict, '{"a": [1]}') == {"a": [1]} and parse_value(Any, "[1, 2]") == [1, 2]
    assert parse_value(Literal["a", 1], "1") == 1
    from optimum_slimgpt.config import DatasetLike  # a union with a sequence of texts: a path, never split

    assert parse_value(DatasetLike, "my,data.txt") == "my,data.txt"
    for tp, raw in ((int, "1.5"), (float, "x"), (list[float], "1,y"), (dict, "3"), (Literal["a"], "b")):
        with pytest.raises(ValueError):
            parse_value(tp, raw)


# ------------------------------------------------------------------------------------------- --config FILE
def test_config_file_then_flags(tmp_path, capsys):
    saved = SlimLLMConfig(pruning_ratio=0.35, num_samples=16, seqlen=64, keep_lowest=0.01, swap_search=False)
    (tmp_path / "c.json").write_text(saved.to_json_string())
    (tmp_path / "c.yaml").write_text("method: slimllm\npruning_ratio: 0.35\nnum_samples: 16\nseqlen: 64\n"
                                     "keep_lowest: 0.01\nswap_search: false\n")
    for name in ("c.json", "c.yaml"):
        args = _parse(["prune", *BASE, "--config", str(tmp_path / name)])
        assert cli._config_from_args(args) == saved
        args = _parse(["prune", *BASE, "--config", str(tmp_path / name), "--ratio", "0.5", "--swap-search"])
        assert cli._config_from_args(args) == dataclasses.replace(saved, pruning_ratio=0.5, swap_search=True)
    # --method names another method: the file's shared fields stay, its SlimLLM fields are left out
    cfg = cli._config_from_args(_parse(["prune", *BASE, "--config", str(tmp_path / "c.json"), "--method", "slimgpt"]))
    assert type(cfg).__name__ == "SlimGPTConfig" and cfg.pruning_ratio == 0.35 and cfg.num_samples == 16
    # --help follows the file's method
    rc, out, _ = call_cli(capsys, "prune", "--config", str(tmp_path / "c.yaml"), "--help")
    assert rc == 0 and "--keep-lowest" in out and "--damp-percent" not in out
    (tmp_path / "bad.json").write_text(json.dumps({**saved.to_dict(), "no_such_field": 1}))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.yaml").write_text("a: [1,")
    for name, message in (("bad.json", "unknown SlimLLMConfig keys: ['no_such_field']"),
                          ("list.json", "expected an object of config fields, got list"),
                          ("broken.yaml", "broken.yaml is not valid YAML"), ("missing.json", "No such file")):
        rc, _, err = call_cli(capsys, "prune", *BASE, "--config", str(tmp_path / name))
        assert rc == 2 and err.count("\n") == 1 and message in err, err
    rec = RecoveryConfig(max_steps=3, learning_rate=1e-3, loss="kd+lm").to_dict()
    (tmp_path / "r.json").write_text(json.dumps({"loss": "kd+lm", "config": rec, "data": {"dataset": "wikitext2"}}))
    rcfg = _parse_recover(["--config", str(tmp_path / "r.json"), "--lr", "2e-3"])
    assert rcfg == RecoveryConfig(max_steps=3, learning_rate=2e-3, loss="kd+lm")


@pytest.mark.skipif(not have_shared(TINYSTORIES_TXT), reason="../shared TinyStories missing")
def test_prune_config_from_a_checkpoint_record_repeats_the_run_bit_for_bit(tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers import tok512_tokenizer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=3,
                                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256))
    src = tmp_path / "tiny"
    model.save_pretrained(src)
    tok512_tokenizer().save_pretrained(src)
    calib = tmp_path / "calib.txt"
    calib.write_text(TINYSTORIES_TXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")

    def prune(out: str, *flags: str) -> dict:
        rc, _, err = call_cli(capsys, "prune", "--model", str(src), "--output", str(tmp_path / out), *flags)
        assert rc == 0, err[-2000:]
        return load_file(tmp_path / out / "model.safetensors")

    first = prune("a", "--dataset", str(calib), "--ratio", "0.4", "--schedule", "linear_increase", "--samples", "6",
                  "--seqlen", "48", "--batch-size", "3", "--seed", "7", "--damp", "0.05", "--head-selection",
                  "obs_official", "--ffn-min-group", "8", "--ffn-max-group", "16", "--channel-multiple", "4")
    record = json.loads((tmp_path / "a" / "config.json").read_text())["pruning_config"]
    (tmp_path / "record.json").write_text(json.dumps(record))
    rc, _, err = call_cli(capsys, "prune", "--model", str(src), "--output", str(tmp_path / "x"), "--config",
                          str(tmp_path / "record.json"))
    assert rc == 2 and err.count("\n") == 1 and '"name": "calib.txt"' in err and "give it with --dataset" in err

    again = prune("b", "--config", str(tmp_path / "record.json"), "--dataset", str(calib))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    back = json.loads((tmp_path / "b" / "config.json").read_text())["pruning_config"]
    assert back["config"] == record["config"] and back["calibration"] == record["calibration"]
    assert back["layers"] == record["layers"]
    # the Python side of the same record
    assert PruningConfig.from_record(record, dataset=str(calib)) == cli._config_from_args(_parse(
        ["prune", *BASE, "--config", str(tmp_path / "record.json"), "--dataset", str(calib)]))
    # the record carried every non-default setting (a run from the defaults would differ)
    defaults = {k: v for k, v in PruningConfig.for_method("slimgpt").to_dict().items() if k in record["config"]}
    assert {k for k in record["config"] if record["config"][k] != defaults[k]} == {
        "pruning_ratio", "schedule", "batch_size", "damp_percent", "head_selection", "ffn_min_group", "ffn_max_group",
        "channel_multiple"}
    assert (record["calibration"]["num_samples"], record["calibration"]["seqlen"], record["calibration"]["seed"]) == (
        6, 48, 7)
