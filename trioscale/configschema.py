"""The configuration schema: how a setting is declared once and what is derived from that.

A setting is one field of a frozen dataclass, declared with :func:`setting`::

    listen_addr: str = setting(STR, "127.0.0.1:8080", "control protocol", check=hostport)

The field's metadata holds a :class:`Setting`: its kind (how a YAML or environment value becomes the
typed value), its default, a one-line description, the allowed choices and its checks. A field that
holds a nested record is declared with :func:`section`. :class:`Schema` walks the tree from the root
record once and gives every dotted key with its attribute path, default and environment variable;
loading, validation, ``as_dict``, ``replace_keys`` and the table in docs/configuration.md all read
that one list, so a default or a kind cannot be restated somewhere and drift. Checks that read
several keys are :class:`Rule` objects.

Validation never stops at the first problem: every step returns (key, problem) pairs, and a key
whose value could not be converted or failed its own checks is left out of the rules that read it,
so one typo is reported once rather than again by every rule downstream of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from trioscale.shared.domain.durations import MAX_DURATION, parse_duration
from trioscale.shared.net.addr import split_host_port

__all__ = [
    "Kind",
    "Setting",
    "Rule",
    "Key",
    "Foreign",
    "Schema",
    "setting",
    "section",
    "not_a_key",
    "env_name",
    "parse_duration",
    "split_hostport",
    "show_duration",
    "MAX_DURATION",
    # the kinds
    "STR", "WORD", "INT", "BOOL", "AUTOBOOL", "PATH", "OPTPATH", "DATAFILE", "DURATION", "OPTDURATION",
    "SSL", "STRLIST", "PATHLIST", "RECORDS", "ROUTES", "STRMAP", "MODE",
]

Problem = tuple[str, str]  # (dotted key, what is wrong with it)
Check = Callable[[Any], Iterable[str]]


# ---------------------------------------------------------------------------------------------
# value parsing (durations: shared/domain/durations.py, which the admin API reads them with too)


def show_duration(d: timedelta) -> str:
    """A duration the way the file would spell it: 100ms, 10s, 300s."""
    seconds = d.total_seconds()
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def split_hostport(addr: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port). ValueError if not (the one parser: shared/net/addr)."""
    return split_host_port(addr)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_SSL_MODES = ("allow", "disable", "prefer", "require", "verify-ca", "verify-full")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def _to_str(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple, dict)):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _to_path(value: Any, base: Path) -> Path:
    if isinstance(value, Path):
        path = value
    else:
        text = _to_str(value)
        if not text:
            raise ValueError("expected a path, got an empty string")
        path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else base / path


def _to_list(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list, got {value!r}")
    return tuple(value)


def _env_list(text: str) -> Any:
    """A list from the environment: JSON, or comma-separated."""
    text = text.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"bad JSON list: {exc.msg}") from None
    return [part.strip() for part in text.split(",") if part.strip()]


def _env_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected JSON, {exc.msg}") from None


# ---------------------------------------------------------------------------------------------
# kinds


@dataclass(frozen=True)
class Kind:
    """How one sort of value is read, typed and shown.

    `convert(raw, base)` turns a value from the file (or an already-typed one) into the typed value,
    resolving relative paths against `base`; ValueError says what is wrong. `from_env` turns an
    environment variable's text into what `convert` takes. `annotation` is what the dataclass field
    must be annotated with (a test compares them)."""

    name: str
    annotation: str
    convert: Callable[[Any, Path], Any]
    show: Callable[[Any], str]
    from_env: Callable[[str], Any] = lambda text: text


def _code(text: str) -> str:
    return f"`{text}`" if text else '`""`'


def _show_list(value: Sequence[Any]) -> str:
    return _code(json.dumps([str(v) for v in value])) if value else "`[]`"


def _optional(convert: Callable[[Any, Path], Any]) -> Callable[[Any, Path], Any]:
    return lambda value, base: None if value is None or value == "" else convert(value, base)


def _convert_ssl(value: Any, base: Path) -> bool | str:
    if isinstance(value, bool):
        return value
    text = _to_str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    if text not in _SSL_MODES:
        raise ValueError(f"expected true, false or one of {', '.join(_SSL_MODES)}, got {value!r}")
    return text


def _convert_optduration(value: Any, base: Path) -> timedelta | None:
    if value is None:
        return None
    d = parse_duration(value)
    return None if d == timedelta(0) else d


def _convert_records(value: Any, base: Path) -> tuple[dict[str, Any], ...]:
    items = _to_list(value)
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"expected a list of mappings, got an item {item!r}")
    return tuple(dict(item) for item in items)


def _convert_routes(value: Any, base: Path) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of domain to list of nameservers, got {value!r}")
    out: dict[str, tuple[str, ...]] = {}
    for domain, servers in value.items():
        if isinstance(servers, str):
            servers = [servers]
        if not isinstance(servers, (list, tuple)):
            raise ValueError(f"domain {domain!r}: expected a list of nameservers, got {servers!r}")
        out[_to_str(domain)] = tuple(_to_str(s) for s in servers)
    return out


def _convert_mode(value: Any) -> str:
    # YAML 1.1 reads an unquoted 0770 as the octal number 504: give it back its spelling
    if isinstance(value, int) and not isinstance(value, bool):
        return f"0{value:o}"
    return _to_str(value)


def _show_path(p: Path | None) -> str:
    if p is None:
        return "none"
    return _code(str(p) if p.is_absolute() else f"./{p}")


STR = Kind("string", "str", lambda v, base: _to_str(v), _code)
#: a word compared without regard to case, kept in lower case (log levels)
WORD = Kind("string", "str", lambda v, base: _to_str(v).lower(), _code)
INT = Kind("integer", "int", lambda v, base: _to_int(v), lambda v: _code(str(v)))
BOOL = Kind("boolean", "bool", lambda v, base: _to_bool(v), lambda v: _code(str(v).lower()))
#: a file mode in octal, as text
MODE = Kind("string", "str", lambda v, base: _convert_mode(v), _code)
#: a boolean whose default is computed at load from other keys (the schema's default is shown only)
AUTOBOOL = Kind("boolean", "bool", _optional(lambda v, base: _to_bool(v)), lambda v: _code(str(v).lower()))
PATH = Kind("path", "Path", _to_path, _show_path)
OPTPATH = Kind("path", "Path | None", _optional(_to_path), _show_path)
#: a file that lives in the data directory unless set: the default is its name there
DATAFILE = Kind("path", "Path", _optional(_to_path), lambda p: _code(f"<data_dir>/{p}"))
DURATION = Kind("duration", "timedelta", lambda v, base: parse_duration(v), lambda d: _code(show_duration(d)))
#: a duration where 0 means never (None)
OPTDURATION = Kind(
    "duration", "timedelta | None", _convert_optduration, lambda d: "`0` (never)" if d is None else _code(show_duration(d))
)
SSL = Kind("boolean or sslmode", "bool | str", _convert_ssl, lambda v: _code(str(v).lower()))
STRLIST = Kind(
    "list of strings",
    "tuple[str, ...]",
    lambda v, base: tuple(_to_str(s) for s in _to_list(v)),
    _show_list,
    _env_list,
)
PATHLIST = Kind(
    "list of paths",
    "tuple[Path, ...]",
    lambda v, base: tuple(_to_path(p, base) for p in _to_list(v)),
    _show_list,
    _env_list,
)
RECORDS = Kind("list of mappings", "tuple[dict[str, Any], ...]", _convert_records, _show_list, _env_json)
ROUTES = Kind(
    "mapping of domain to list of strings",
    "dict[str, tuple[str, ...]]",
    _convert_routes,
    lambda v: _code(json.dumps(v)) if v else "`{}`",
    _env_json,
)



def _convert_strmap(value: Any, base: Path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of strings to strings, got {value!r}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, (dict, list, tuple)):
            raise ValueError(f"{key!r}: expected a string, got {item!r}")
        out[_to_str(key)] = _to_str(item)
    return out


#: a mapping of names to strings (extra URL parameters)
STRMAP = Kind(
    "mapping of strings",
    "dict[str, str]",
    _convert_strmap,
    lambda v: _code(json.dumps(v)) if v else "`{}`",
    _env_json,
)


# ---------------------------------------------------------------------------------------------
# declarations

_SETTING = "trioscale.setting"
_SECTION = "trioscale.section"
_NOT_A_KEY = "trioscale.not_a_key"


@dataclass(frozen=True)
class Setting:
    """One configuration key as declared on its dataclass field."""

    kind: Kind
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    #: the key's name in the file when the attribute cannot be spelled that way (a Python keyword)
    name: str = ""
    #: other names accepted in the file and the environment (Headscale's spellings)
    aliases: tuple[str, ...] = ()
    #: the default as the doc shows it when the value is computed at load from other keys
    shown_default: str = ""
    #: other spellings of a value, mapped to the value (Headscale's log level `warn` is `warning`)
    synonyms: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class _Section:
    record: type
    doc: str
    defaults: Mapping[str, Any]


def setting(
    kind: Kind,
    default: Any,
    doc: str,
    *,
    choices: Sequence[str] = (),
    check: Check | Sequence[Check] = (),
    name: str = "",
    aliases: Sequence[str] = (),
    shown_default: str = "",
    synonyms: Mapping[str, str] | None = None,
) -> Any:
    """A dataclass field that is one configuration key."""
    checks = (check,) if callable(check) else tuple(check)
    spec = Setting(kind, default, doc, tuple(choices), checks, name, tuple(aliases), shown_default, dict(synonyms or {}))
    metadata = {_SETTING: spec}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(record: type, doc: str = "", **defaults: Any) -> Any:
    """A dataclass field holding a nested record; `defaults` replace the record's own defaults
    here (one record type serves every listener's limits, each with its own caps)."""
    spec = _Section(record, doc, dict(defaults))
    return dataclasses.field(default_factory=lambda: record(**defaults), metadata={_SECTION: spec})


def not_a_key(**kwargs: Any) -> Any:
    """A dataclass field that is not read from the configuration (where a record came from)."""
    return dataclasses.field(metadata={_NOT_A_KEY: True}, **kwargs)


@dataclass(frozen=True)
class Rule:
    """A check over several keys. `check` gets their values in order and yields problems, each
    reported under the first key."""

    keys: tuple[str, ...]
    check: Callable[..., Iterable[str]]


@dataclass(frozen=True)
class Foreign:
    """A key of another server's configuration (Headscale's) that trioscale does not implement.

    A file that gives it is accepted, and the key is reported, unless its value asks for nothing
    trioscale does not do anyway: `inert` says which values those are, and `only_with` names a key
    without which this one has no effect at all (ACME settings without an ACME hostname): when
    that key is absent, or foreign and not reported, neither is this one."""

    reason: str
    inert: Callable[[Any], bool] = lambda value: False
    only_with: str = ""
    #: how the doc describes the values that are not reported ("" = every value is)
    inert_doc: str = ""


@dataclass
class Read:
    """A nested mapping shaped like the file, read against the schema."""

    #: {dotted key: raw value}, aliases already resolved to the key
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: (where, what is wrong) for unknown keys, misshapen sections and conflicting spellings
    problems: list[Problem] = dataclasses.field(default_factory=list)
    #: {foreign dotted key: raw value} in the order met
    foreign: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: {key: the spelling it was given under}
    spelled: dict[str, str] = dataclasses.field(default_factory=dict)
    #: {key: [(another spelling, its raw value)]}: one setting given twice, to compare once typed
    again: dict[str, list[tuple[str, Any]]] = dataclasses.field(default_factory=dict)

    def given(self, key: str) -> Any:
        """The raw value of a key of ours or a foreign key; None when not given."""
        return self.values.get(key, self.foreign.get(key))

    def reported(self, foreign: Mapping[str, Foreign]) -> list[str]:
        """The foreign keys given with a value that asks for something trioscale does not do."""

        def asks(key: str) -> bool:
            if key not in self.foreign:
                return key not in foreign and self.given(key) not in (None, "", [], {})
            spec = foreign[key]
            if spec.only_with and not asks(spec.only_with):
                return False
            return not spec.inert(self.foreign[key])

        return [key for key in self.foreign if asks(key)]


# ---------------------------------------------------------------------------------------------
# the walked schema


@dataclass(frozen=True)
class Key:
    """A setting at its place in the tree."""

    key: str  # dotted, spelled as in the file: "dns.nameservers.global"
    attrs: tuple[str, ...]  # the attribute path: ("dns", "nameservers", "global_")
    setting: Setting
    default: Any
    env: str  # the environment variable that overrides it

    def convert(self, raw: Any, base: Path) -> Any:
        """The typed value of `raw`; ValueError if it cannot be one."""
        value = self.setting.kind.convert(raw, base)
        if isinstance(value, str):
            value = self.setting.synonyms.get(value, value)
        choices = self.setting.choices
        if choices and value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def check(self, value: Any) -> list[str]:
        return [problem for check in self.setting.checks for problem in check(value)]


@dataclass(frozen=True)
class SectionKey:
    key: str
    attrs: tuple[str, ...]
    record: type
    doc: str


def env_name(key: str) -> str:
    """The environment variable that overrides dotted `key`."""
    return "TRIOSCALE_" + key.upper().replace(".", "_")


class Schema:
    """Every key of the record tree under `root`, and what is done with all of them at once."""

    def __init__(
        self,
        root: type,
        rules: Sequence[Rule] = (),
        *,
        renamed: Mapping[str, str] | None = None,
        foreign: Mapping[str, Foreign] | None = None,
    ) -> None:
        """`renamed` maps other full spellings of a key (another server's, an older one) to the key;
        `foreign` lists another server's keys that are accepted but not implemented."""
        self.root = root
        self.keys: dict[str, Key] = {}
        self.sections: dict[str, SectionKey] = {}
        self.aliases: dict[str, str] = {}
        self._walk(root, "", (), {})
        for alias, key in (renamed or {}).items():
            if key not in self.keys or alias in self.keys or alias in self.aliases:
                raise TypeError(f"renamed key {alias} -> {key}: the target must be a key, the name new")
            self.aliases[alias] = key
        self.foreign: dict[str, Foreign] = dict(foreign or {})
        for key, spec in self.foreign.items():
            if key in self.keys or key in self.aliases or key in self.sections:
                raise TypeError(f"foreign key {key} is also ours")
            if spec.only_with and spec.only_with not in self.keys and spec.only_with not in self.foreign:
                raise TypeError(f"foreign key {key} depends on unknown key {spec.only_with}")
        #: sections that hold only renamed or foreign keys (Headscale's `oidc`, `dns_config`)
        self.foreign_sections = {
            ".".join(parts[:i])
            for name in list(self.foreign) + list(self.aliases)
            for parts in [name.split(".")]
            for i in range(1, len(parts))
        } - set(self.sections)
        self.rules = tuple(rules)
        for r in self.rules:
            unknown = [k for k in r.keys if k not in self.keys]
            if unknown:
                raise TypeError(f"rule {r.check.__name__} reads unknown keys {unknown}")
        self.by_env: dict[str, str] = {}
        for name, key in [(k, k) for k in self.keys] + list(self.aliases.items()):
            variable = env_name(name)
            if variable in self.by_env:  # key names hold "_" too, so two keys could collide
                raise TypeError(f"two keys have the environment name {variable}")
            self.by_env[variable] = key

    def _walk(self, record: type, prefix: str, attrs: tuple[str, ...], overrides: Mapping[str, Any]) -> None:
        for f in dataclasses.fields(record):
            if f.metadata.get(_NOT_A_KEY):
                continue
            sub = f.metadata.get(_SECTION)
            spec = f.metadata.get(_SETTING)
            if sub is not None:
                key = prefix + f.name
                self.sections[key] = SectionKey(key, attrs + (f.name,), sub.record, sub.doc)
                self._walk(sub.record, key + ".", attrs + (f.name,), sub.defaults)
            elif spec is not None:
                key = prefix + (spec.name or f.name)
                default = overrides.get(f.name, spec.default)
                self.keys[key] = Key(key, attrs + (f.name,), spec, default, env_name(key))
                for alias in spec.aliases:
                    self.aliases[prefix + alias] = key
            else:
                raise TypeError(f"{record.__name__}.{f.name} is declared with neither setting() nor section()")

    # -- reading nested data ----------------------------------------------------------------
    def flatten(self, data: Mapping[Any, Any]) -> tuple[dict[str, Any], list[Problem]]:
        """A nested mapping shaped like the file -> ({dotted key: raw value}, problems)."""
        read = self.read(data)
        return read.values, read.problems

    def read(self, data: Mapping[Any, Any]) -> Read:
        """A nested mapping shaped like the file, every key sorted: ours (under any spelling),
        foreign, or unknown. A key given under a second spelling is kept aside in `again`."""
        read = Read()

        def walk(node: Mapping[Any, Any], prefix: str) -> None:
            for raw_key, value in node.items():
                if not isinstance(raw_key, str):
                    where = prefix.rstrip(".") or "top level"
                    read.problems.append((f"key {raw_key!r} under {where}", "keys must be strings"))
                    continue
                spelling = prefix + raw_key
                key = self.aliases.get(spelling, spelling)
                if key in self.keys:
                    if value is None:  # `port:` with nothing after it keeps the default, as in Headscale
                        continue
                    if key in read.spelled and read.spelled[key] != spelling:
                        read.again.setdefault(key, []).append((spelling, value))
                        continue
                    read.values[key] = value
                    read.spelled[key] = spelling
                elif key in self.foreign:
                    read.foreign[key] = value
                elif key in self.sections or key in self.foreign_sections:
                    if value is None:
                        continue
                    if not isinstance(value, Mapping):
                        read.problems.append((key, f"expected a mapping, got {value!r}"))
                        continue
                    walk(value, key + ".")
                else:
                    read.problems.append((key, "unknown key"))

        walk(data, "")
        return read

    # -- validation -------------------------------------------------------------------------
    def check(self, values: Mapping[str, Any], skip: Iterable[str] = ()) -> list[Problem]:
        """Every problem of a complete set of typed values: each key's own checks, then the rules.
        Keys in `skip` (already reported) and keys that fail their own checks are left out of
        the rules that read them."""
        bad = set(skip)
        problems: list[Problem] = []
        for key, spec in self.keys.items():
            if key in bad:
                continue
            found = spec.check(values[key])
            if found:
                bad.add(key)
                problems.extend((key, p) for p in found)
        for r in self.rules:
            if bad.intersection(r.keys):
                continue
            problems.extend((r.keys[0], p) for p in r.check(*(values[k] for k in r.keys)))
        return problems

    # -- records ----------------------------------------------------------------------------
    def defaults(self) -> dict[str, Any]:
        return {key: spec.default for key, spec in self.keys.items()}

    def build(self, values: Mapping[str, Any], **root_fields: Any) -> Any:
        """The record tree holding `values` (every key), plus fields of the root that are not keys."""

        def make(record: type, prefix: str) -> Any:
            kwargs: dict[str, Any] = {}
            for f in dataclasses.fields(record):
                if f.metadata.get(_NOT_A_KEY):
                    continue
                if _SECTION in f.metadata:
                    kwargs[f.name] = make(f.metadata[_SECTION].record, prefix + f.name + ".")
                else:
                    kwargs[f.name] = values[prefix + (f.metadata[_SETTING].name or f.name)]
            return record(**kwargs)

        return dataclasses.replace(make(self.root, ""), **root_fields) if root_fields else make(self.root, "")

    def values(self, record: Any) -> dict[str, Any]:
        """{dotted key: value} of a record tree."""
        out: dict[str, Any] = {}
        for key, spec in self.keys.items():
            obj = record
            for attr in spec.attrs:
                obj = getattr(obj, attr)
            out[key] = obj
        return out

    def attrs_of(self, dotted: str) -> tuple[str, ...] | None:
        """The attribute path of a key or section, in the file's spelling or the attributes'."""
        for table in (self.keys, self.sections):
            found = table.get(self.aliases.get(dotted, dotted))
            if found is not None:
                return found.attrs
        for table in (self.keys, self.sections):
            for entry in table.values():
                if ".".join(entry.attrs) == dotted:
                    return entry.attrs
        return None

    # -- the doc ----------------------------------------------------------------------------
    def markdown(self) -> str:
        """The settings table of docs/configuration.md: one row per key (and per documented
        section), in declaration order."""
        rows = ["| key | type | default | environment | description |", "|---|---|---|---|---|"]
        documented = {k: s for k, s in self.sections.items() if s.doc}
        shown: set[str] = set()
        for key, spec in self.keys.items():
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            for name in _ancestors(parent):
                if name in documented and name not in shown:
                    shown.add(name)
                    rows.append(f"| `{name}` | section | | | {_cell(documented[name].doc)} |")
            s = spec.setting
            default = s.shown_default or s.kind.show(spec.default)
            doc = s.doc
            if s.choices:
                doc = _sentence(doc, "one of " + ", ".join(f"`{c}`" for c in s.choices))
            if s.synonyms:
                doc = _sentence(doc, "also " + ", ".join(f"`{a}` (= `{v}`)" for a, v in s.synonyms.items()))
            aliases = [a for a, k in self.aliases.items() if k == key]
            if aliases:
                doc = _sentence(doc, "also spelled " + ", ".join(f"`{a}`" for a in aliases))
            attr = ".".join(spec.attrs)
            if attr != key:
                doc = _sentence(doc, f"attribute `config.{attr}`")
            rows.append(f"| `{key}` | {s.kind.name} | {default} | `{spec.env}` | {_cell(doc)} |")
        return "\n".join(rows) + "\n"


def _ancestors(dotted: str) -> list[str]:
    parts = dotted.split(".") if dotted else []
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _sentence(doc: str, more: str) -> str:
    return f"{doc}; {more}" if doc else more


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
