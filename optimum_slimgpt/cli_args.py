"""Command-line flags generated from the config dataclasses: one source of truth for every option.

A field ``name: T = field(default=..., metadata={"help": "one line"})`` of a config dataclass becomes the flag
``--name`` (underscores as dashes, ``prefix`` in front for a second config of one command, as ``prune
--recover-*``), with its help, its choices and its default in ``--help``. The value is converted from the
annotation (as transformers' ``HfArgumentParser`` does):

* ``bool``: a pair of flags, ``--name`` / ``--no-name``;
* ``int``, ``float``, ``str``, ``Literal[...]``: one value; ``Optional[T]`` also takes ``none``;
* ``list[T]``, or a union holding one such as ``Union[str, list[float]]``: comma-separated values (in the union,
  a value without a comma is read as the other member);
* ``dict``: a JSON object; anything else: JSON when it parses, else the text.

Other ``metadata`` keys: ``choices`` (listed in the help; the config's ``validate`` checks them), ``aliases``
(more names, usually the older or shorter ones: ``["--ratio"]``) and ``flag`` (the main name, where ``--name`` is
taken by another option), ``parse`` (a function of the text that returns the value, instead of the conversion from
the annotation; a ``ValueError`` it raises is reported with the flag). A flag sets its field only when it is given, over ``--config FILE`` and the defaults.

Nothing is *validated* here: the config does that once, on construction, and a bad value comes back as one
:class:`~optimum_slimgpt.config.ConfigError` whose message starts with the flag the user typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import types
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union, get_args, get_origin, get_type_hints

from .config import ConfigError

__all__ = ["CLIError", "ConfigFlags", "HelpFormatter", "Parser", "option_strings", "parse_value", "peek",
           "read_config_file", "show_default"]

#: namespace attribute: {dest: the option string the user typed}, for messages that name the flag used
TYPED = "_typed_flags"


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The constructor fields of a config dataclass (``ClassVar`` and ``InitVar`` are not fields)."""
    return [f for f in dataclasses.fields(cls) if f.init]


def field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def option_strings(f: dataclasses.Field, prefix: str = "") -> list[str]:
    """The flag names of field ``f``: the main one first (``metadata["flag"]`` or ``--field-name``), then the
    aliases; with ``prefix`` (``"recover-"``) every long name gets it."""
    names = [f.metadata.get("flag") or "--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
    return ["--" + prefix + n[2:] for n in names if n.startswith("--")] if prefix else names


def show_default(value: Any) -> str:
    """A default as ``--help`` shows it, in the form the flag would take."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return json.dumps(value) if isinstance(value, dict) else str(value)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default unless the help states it or it says nothing (``None``, ``False``)."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or "") or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Usage errors too end as one ``error:`` line (exit status 2), like every other bad input."""

    def error(self, message: str):
        raise CLIError(f"{message} (see '{self.prog} --help')")


def peek(argv: Optional[Sequence[str]], command: str, flag: str) -> Optional[str]:
    """The value of ``flag`` after ``command`` in ``argv``, before parsing (to decide what ``--help`` lists)."""
    rest = list(argv or [])
    rest = rest[rest.index(command) + 1:] if command in rest else []
    for i, a in enumerate(rest):
        if a == flag and i + 1 < len(rest):
            return rest[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# ------------------------------------------------------------------------------------------- conversion
def _members(tp: Any) -> tuple[list[Any], bool]:
    """(the types of a union without ``None``, whether ``None`` is allowed); a plain type is a one-member union."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def _is_list(tp: Any) -> bool:
    return (get_origin(tp) or tp) in (list, tuple)


def is_bool(tp: Any) -> bool:
    members, _ = _members(tp)
    return members == [bool]


def _takes_dict(tp: Any) -> bool:
    return any(m is Any or (get_origin(m) or m) is dict for m in _members(tp)[0])


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _scalar(tp: Any, raw: str) -> Any:
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("not an integer") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError("not a number") from None
    if tp is bool:
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ValueError("not true or false")
    if get_origin(tp) is Literal:
        for v in get_args(tp):
            if str(v) == raw:
                return v
        raise ValueError(f"not one of {', '.join(str(v) for v in get_args(tp))}")
    if _is_list(tp):
        item = (get_args(tp) or (str,))[0]
        try:
            items = [_scalar(item, x.strip()) for x in raw.split(",") if x.strip()]
        except ValueError:
            kind = "numbers" if item in (int, float) else f"{getattr(item, '__name__', item)} values"
            raise ValueError(f"a list must be comma-separated {kind}") from None
        return tuple(items) if (get_origin(tp) or tp) is tuple else items
    if (get_origin(tp) or tp) is dict:
        value = _json_or_text(raw)
        if not isinstance(value, dict):
            raise ValueError('not a JSON object such as {"key": 1}')
        return value
    if tp is str or tp is Path:
        return raw
    return _json_or_text(raw)  # Any and the rest


def parse_value(tp: Any, raw: str) -> Any:
    """One command-line value ``raw`` as a value of the annotation ``tp`` (see the module docstring);
    ``ValueError`` says what was expected."""
    members, optional = _members(tp)
    if optional and raw.lower() in ("none", "null"):
        return None
    lists = [m for m in members if _is_list(m)]
    if lists and ("," in raw or len(lists) == len(members)):
        return _scalar(lists[0], raw)
    scalars = [m for m in members if not _is_list(m) and (m in (int, float, bool, str, Path, Any)
                                                          or get_origin(m) in (Literal, dict) or m is dict)]
    error: Optional[ValueError] = None
    for m in scalars or [Any]:
        try:
            return _scalar(m, raw)
        except ValueError as e:
            error = error or e
    raise error  # type: ignore[misc]


def _metavar(tp: Any, choices: Sequence[Any]) -> str:
    if choices and sum(len(str(c)) + 1 for c in choices) <= 40:
        return "{" + ",".join(str(c) for c in choices) + "}"
    members, _ = _members(tp)
    if any(_is_list(m) for m in members):
        return "A,B,..."
    first = members[0]
    return {int: "N", float: "X", dict: "JSON"}.get(get_origin(first) or first, "TEXT")


class _FieldAction(argparse.Action):
    """Stores the converted value (only when the flag is given: the default is ``SUPPRESS``) and the option
    string used; a value that does not convert raises :class:`ConfigError` naming that flag."""

    def __init__(self, option_strings, dest, *, field_name: str, tp: Any, negatives: Sequence[str] = (),
                 parse: Optional[Any] = None, **kw):
        self.field_name, self.tp, self.negatives, self.parse = field_name, tp, set(negatives), parse
        super().__init__(option_strings, dest, nargs=0 if negatives else None, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        if self.negatives:
            value = option_string not in self.negatives
            base = option_string[5:] if option_string in self.negatives else option_string[2:]
            typed = f"--{base}/--no-{base}"
        else:
            try:
                value = self.parse(values) if self.parse is not None else parse_value(self.tp, values)
            except ValueError as e:
                raise ConfigError(self.field_name, f"{option_string} {values!r}: {e}") from None
            typed = option_string
        setattr(namespace, self.dest, value)
        setattr(namespace, TYPED, {**getattr(namespace, TYPED, {}), self.dest: typed})


# ------------------------------------------------------------------------------------------- flags
class ConfigFlags:
    """The flags of config dataclasses in one (sub)parser.

    ``classes[0]``'s fields are listed in ``--help``, each in the first of ``sections`` (``(title, class)``) whose
    class has the field (a string: one section for all); the fields that only the other ``classes`` have (the other methods' own knobs) are
    accepted but hidden, so that passing one gets a clear "does not apply" error. ``notes`` replaces the shown
    default of some fields (``{"seqlen": "min(--seqlen, 512)"}``) where the command derives it.
    """

    def __init__(self, parser: argparse.ArgumentParser, classes: Sequence[type], *, prefix: str = "",
                 sections: Union[str, Sequence[tuple[str, type]]] = (), notes: Optional[Mapping[str, str]] = None) -> None:
        self.prefix, self.key = prefix, "cfg:" + prefix
        sections = [(sections, classes[0])] if isinstance(sections, str) else sections
        self.fields: dict[str, dataclasses.Field] = {}
        self.types: dict[str, Any] = {}
        shown = {f.name for f in config_fields(classes[0])}
        groups = [(parser.add_argument_group(title), {f.name for f in config_fields(c)}) for title, c in sections]
        for cls in classes:
            hints = get_type_hints(cls)
            for f in config_fields(cls):
                if f.name in self.fields:
                    continue
                self.fields[f.name], self.types[f.name] = f, hints[f.name]
                tp, opts = hints[f.name], option_strings(f, prefix)
                negatives = ["--no-" + o[2:] for o in opts] if is_bool(tp) else []
                choices = tuple(f.metadata.get("choices", ()))
                metavar = None if negatives else _metavar(tp, choices)
                if f.name in shown:
                    text = f.metadata.get("help", "")
                    if choices and not (metavar or "").startswith("{"):
                        text += f"; one of: {' | '.join(str(c) for c in choices)}"
                    note = (notes or {}).get(f.name)
                    text = (text + f" (default: {note or show_default(field_default(f))})").replace("%", "%%")
                    group = next((g for g, names in groups if f.name in names), parser)
                else:
                    text, group = argparse.SUPPRESS, parser
                try:
                    group.add_argument(*opts, *negatives, action=_FieldAction, dest=self.dest(f.name),
                                       field_name=f.name, tp=tp, negatives=negatives, help=text,
                                       parse=f.metadata.get("parse"),
                                       **({"metavar": metavar} if metavar else {}))
                except argparse.ArgumentError as e:  # a new field named like a hand-written flag
                    raise TypeError(f"{cls.__name__}.{f.name}: {e}; give the field another name with "
                                    f"metadata={{'flag': '--...'}}") from e

    def dest(self, name: str) -> str:
        return f"{self.key}{name}"

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The fields set on the command line, with their converted values."""
        return {n: getattr(args, self.dest(n)) for n in self.fields if hasattr(args, self.dest(n))}

    def flag(self, args: argparse.Namespace, name: str) -> str:
        """The flag of field ``name`` as the user typed it, else its main name."""
        typed = getattr(args, TYPED, {}).get(self.dest(name))
        if typed:
            return typed
        f = self.fields.get(name)
        return option_strings(f, self.prefix)[0] if f else "--" + self.prefix + name.replace("_", "-")

    def build(self, cls: type, args: argparse.Namespace, base: Optional[Mapping[str, Any]] = None,
              what: str = "") -> Any:
        """``cls(**fields)``, the fields being ``cls``'s defaults, overridden by ``base`` (a ``--config`` file),
        overridden by the flags given. The config validates them, once; its :class:`ConfigError` comes back with
        the flag in front (``--lr: learning_rate must be a number > 0, got 0.0``)."""
        names = {f.name for f in config_fields(cls)}
        given = self.given(args)
        stray = [n for n in given if n not in names]
        if stray:
            raise ConfigError(stray[0], f"{self.flag(args, stray[0])} does not apply to {what or cls.__name__}")
        unknown = sorted(set(base or {}) - names)
        if unknown:
            raise ConfigError(unknown[0], f"--config: unknown {cls.__name__} keys: {unknown}")
        for name, value in (base or {}).items():
            if isinstance(value, dict) and not _takes_dict(self.types.get(name, dict)):
                self._described(args, name, value, given.get(name))
        try:
            return cls(**{**(base or {}), **given})
        except ConfigError as e:
            raise ConfigError(e.field, f"{self.flag(args, e.field)}: {e}") from e


    def _described(self, args: argparse.Namespace, name: str, described: dict, given: Any) -> None:
        """A ``--config`` value that a record can only describe (a local file by name and sha256, in-memory texts,
        token ids) must be given again; a file whose sha256 is not the described one gets a warning."""
        if given is None:
            raise ConfigError(name, f"--config: {name} was {json.dumps(described)}, which the file describes but "
                                    f"cannot re-create: give it with {self.flag(args, name)}")
        if described.get("sha256") and isinstance(given, str) and Path(given).is_file():
            if hashlib.sha256(Path(given).read_bytes()).hexdigest() != described["sha256"]:
                logging.getLogger(__name__).warning("%s %s is not the file of --config (%s: another sha256); the "
                                                    "result will differ", self.flag(args, name), given,
                                                    described.get("name"))


def read_config_file(path) -> dict[str, Any]:
    """A JSON file (YAML for ``.yaml``/``.yml``) holding one object, as a dict; a file that does not parse, or
    holds something else, is one :class:`ConfigError` naming it."""
    p = Path(path)
    text, yaml_file = p.read_text(encoding="utf-8"), p.suffix.lower() in (".yaml", ".yml")
    try:
        if yaml_file:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ValueError(str(e)) from e
        else:
            data = json.loads(text)
    except ValueError as e:
        kind = "YAML" if yaml_file else "JSON"
        raise ConfigError("config", f"{path} is not valid {kind} ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path}: expected an object of config fields, got {type(data).__name__}")
    return data
