"""The README's two commands: the first installs everything the second (the test command) needs, and CI runs
exactly the second."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_the_install_command_installs_what_the_tests_need():
    install, test = _commands()
    assert test == "python -m pytest -q"
    extras = re.search(r'pip install -e "\.\[([a-z,]+)\]"', install)
    assert extras, install
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    installed = {r.split(">")[0].split("=")[0].split("[")[0].strip().lower()
                 for name in extras.group(1).split(",") for r in project["optional-dependencies"][name]}
    needed = {r.split(">")[0].split("=")[0].split("[")[0].strip().lower()
              for r in project["optional-dependencies"]["test"]}
    assert needed <= installed, needed - installed
    assert install.startswith("pip install torch==2.13.0 && ")  # the CPU build first, before anything pulls CUDA


def test_ci_runs_the_readme_test_command():
    _, test = _commands()
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[-1] == test


def _cli_commands() -> list[str]:
    """Every ``optimum-slimgpt ...`` command of the README: the lines of its bash blocks and its inline commands."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = [line.split("#")[0] for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
             for line in block.splitlines() if line.startswith("optimum-slimgpt ")]
    found += [c for c in re.findall(r"`(optimum-slimgpt [^`]*)`", text) if "--model" in c]  # not "`... info`" prose
    return [" ".join(c.replace("[", "").replace("]", "").split()) for c in found]


def test_the_readme_commands_run_unchanged():
    """Each command the README shows parses, and its prune / recover config builds (nothing is loaded; a
    ``--config FILE`` placeholder is only parsed)."""
    import shlex

    from optimum_slimgpt import cli

    commands = _cli_commands()
    assert len(commands) >= 8 and any(" recover " in c for c in commands) and any("--low-memory" in c for c in commands)
    for command in commands:
        argv = shlex.split(command)[1:]
        args = cli.build_parser(argv).parse_args(argv)
        if getattr(args, "config", None):
            continue
        if args.command == "prune":
            cli._prune_recovery_config(args, cli._config_from_args(args))
        elif args.command == "recover":
            cli._recover_config_from_args(args)
