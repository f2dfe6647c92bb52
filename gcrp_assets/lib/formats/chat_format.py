"""Prompt formats: render a sample to one string and record, per block, which characters train.

Built-in formats (names used in configuration):
- `inst`: the 12B Party card's `[INST]role … [/INST]` group format, BOS once, turns need not alternate;
  model turns train on `Name: text[/INST]`.
- `chatml`: ChatML with the speaker's name inside the content; assistant turns train on
  `Name: text<|im_end|>`.
- `herrsimian`: the 8B card's `::::user:Name:` / `::::assistant:Name:` raw text, BOS required,
  no EOS, no masking (everything trains).

Custom formats (`get_format(path)`):
- a YAML spec (`*.yaml`/`*.yml`), e.g.::

      name: party-final-eos        # optional; default: the file's stem
      bos: true                    # one BOS (the tokenizer's bos_token) at the very start
      eos: last                    # none | last (after the sample's final turn) | every_turn
      eos_token: "<|im_end|>"      # optional literal EOS text; default: the tokenizer's eos_token
      separator: "\\n"              # between blocks (never before the first block)
      system: {prefix: "[INST]system\\n", suffix: "[/INST]"}   # optional; default: a nameless user turn
      user:   {prefix: "[INST]user\\n",   suffix: "[/INST]"}
      model:  {prefix: "[INST]model\\n",  suffix: "[/INST]"}
      names: content               # content: `Name: ` opens the text | header: `::::user:Name:` | none
      name_template: "{name}: "    # how a name renders (content default "{name}: ", header "{name}:")
      header_suffix: " "           # header only: closes the header after the name slot (default " ")
      label_policy: model_turns    # model_turns | all | last_model_turn
      stop_strings: ["[INST]", "<|im_end|>"]

  A turn renders as `separator + prefix + name slot + text + suffix [+ EOS]`; the name slot is
  `name_template` with the name filled in (header placement: plus `header_suffix`), or, for a turn
  without a name, nothing (header placement: `header_suffix` alone, e.g. `::::user: text`).
  Unknown keys, wrong types and bad values raise `FormatSpecError` naming the file and the key;
  so does a model prefix ending in a space when model turns are masked (tokenizers attach a space to
  the following word, so that token would straddle the header and the trained span and never train:
  keep spaces with what follows, e.g. `prefix: "ASSISTANT:"`, `names: header`,
  `name_template: " {name}:"`).

- a Jinja chat template (`*.jinja`, or a YAML spec with `template: file.jinja` plus optional
  `name`, `label_policy`, `stop_strings`, `model_role`). Messages are `{"role", "name", "content"}`
  with roles `system`, `user` and `model_role` (default `assistant`); `bos_token`/`eos_token` are
  passed as with `apply_chat_template`. Blocks are found by rendering message prefixes: the template
  is rendered for messages[:0], messages[:1], …, messages[:n]; message k's block starts where the
  render of messages[:k+1] departs from the render of messages[:k] (normally the end of the latter),
  and the final render is the sample's text. Inside a block the message's content (and, if the
  template prints it, the name just before it) is located by search; training starts at the name,
  or at the content when the name is not printed, and runs to the block's end (terminator included).
  Limits: n+1 renders per sample, so O(n²) characters of Jinja rendering (fine for forum threads,
  use a YAML spec for very long ones); the template must be prefix-stable, i.e. adding a message
  must not rewrite earlier text (templates that fold the system prompt into the last user message,
  or that reject non-alternating roles, fail with a clear error); content must be printed verbatim
  (no `| trim`); text a template prints only after the final message (`{% if loop.last %}`) is
  found by longest common prefix: `bos_token`/`eos_token` there are handled exactly (prefixes are
  rendered with one-character stand-ins for them), other literal text must not share leading
  characters with what a following message would print.

Label policies (`label_policy=None` → the format's default): `model_turns` trains the name, text,
terminator (and EOS) of model turns; `all` trains everything (raw text); `last_model_turn` trains
only the last model turn of each window. Turns before `train_from` (overlap context of a window)
never train.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

LABEL_POLICIES = ("model_turns", "all", "last_model_turn")
EOS_POLICIES = ("none", "last", "every_turn")
NAME_PLACEMENTS = ("content", "header", "none")
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "formats"  # the package's example formats
SPEC_SUFFIXES = (".yaml", ".yml", ".jinja")


class FormatSpecError(ValueError):
    """A custom format file is missing, unreadable or invalid; the message names the file and key."""


@dataclass(frozen=True)
class ChatFormat:
    name: str
    add_bos: bool
    system_prefix: str
    system_suffix: str
    role_prefix: dict[str, str]      # "user"/"model" -> header before the name slot
    turn_suffix: str                 # terminator of model turns (and of user turns unless role_suffix says)
    separator: str                   # between blocks
    label_policy: str                # default label policy: "model_turns" | "all" | "last_model_turn"
    stop_strings: tuple[str, ...] = field(default=())
    role_suffix: dict[str, str] | None = None   # per-role terminators; None → turn_suffix for both
    eos_policy: str = "none"         # "none" | "last" | "every_turn" ("template": decided by a Jinja template)
    eos_token: str | None = None     # literal EOS text; None → the tokenizer's eos_token
    names: str = "content"           # where names go: "content" | "header" | "none"
    name_template: str = "{name}: "  # the name slot for a named turn
    nameless: str = ""               # the name slot for a turn without a name
    jinja: str | None = None         # Jinja chat template source (Jinja-defined formats)
    model_role: str = "model"        # role of model turns in chat messages
    source: str | None = None        # file the format was read from

    def name_prefix(self, name: str | None) -> str:
        """The text between a turn's role prefix and its message text."""
        if self.names == "none":
            return self.nameless
        return self.name_template.replace("{name}", name) if name else self.nameless

    def suffix(self, role: str) -> str:
        if self.role_suffix and role in self.role_suffix:
            return self.role_suffix[role]
        return self.turn_suffix

    @property
    def is_jinja(self) -> bool:
        return self.jinja is not None


FORMATS: dict[str, ChatFormat] = {
    "inst": ChatFormat(
        name="inst", add_bos=True,
        system_prefix="[INST]system\n", system_suffix="[/INST]",
        role_prefix={"user": "[INST]user\n", "model": "[INST]model\n"},
        turn_suffix="[/INST]", separator="\n", label_policy="model_turns",
        stop_strings=("[INST]", "<|im_end|>"),
    ),
    "chatml": ChatFormat(
        name="chatml", add_bos=False,
        system_prefix="<|im_start|>system\n", system_suffix="<|im_end|>",
        role_prefix={"user": "<|im_start|>user\n", "model": "<|im_start|>assistant\n"},
        turn_suffix="<|im_end|>", separator="\n", label_policy="model_turns",
        stop_strings=("<|im_end|>", "<|im_start|>"),
    ),
    "herrsimian": ChatFormat(
        name="herrsimian", add_bos=True,
        system_prefix="::::user: ", system_suffix="",
        role_prefix={"user": "::::user:", "model": "::::assistant:"},
        turn_suffix="", separator="\n\n", label_policy="all",
        stop_strings=("\n\n::::", "::::user", "::::assistant"),
        names="header", name_template="{name}: ", nameless=" ",
    ),
}


# --------------------------------------------------------------------------------------------
# Looking formats up, custom spec files


def builtin_specs() -> list[str]:
    """Names of the example spec files shipped in `gcrp_assets/formats/`."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.stem for p in BUILTIN_DIR.iterdir() if p.suffix in SPEC_SUFFIXES)


def get_format(name_or_path: "str | os.PathLike | ChatFormat") -> ChatFormat:
    """A built-in format by name, a shipped example spec by name, or a `.yaml`/`.jinja` spec file."""
    if isinstance(name_or_path, ChatFormat):
        return name_or_path
    text = os.fspath(name_or_path)
    if text in FORMATS:
        return FORMATS[text]
    path = Path(text).expanduser()
    if path.suffix.lower() in SPEC_SUFFIXES:
        if not path.is_file():
            raise FormatSpecError(f"{path}: format spec file not found")
        stat = path.stat()
        return _load_spec(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    for suffix in SPEC_SUFFIXES:
        shipped = BUILTIN_DIR / f"{text}{suffix}"
        if "/" not in text and shipped.is_file():
            stat = shipped.stat()
            return _load_spec(str(shipped), stat.st_mtime_ns, stat.st_size)
    raise ValueError(f"unknown prompt format {text!r}; choose one of {sorted(FORMATS) + builtin_specs()} "
                     "or give the path of a .yaml/.jinja format spec")


@functools.lru_cache(maxsize=64)
def _load_spec(path: str, _mtime_ns: int, _size: int) -> ChatFormat:
    file = Path(path)
    if file.suffix.lower() == ".jinja":
        return jinja_format(_read(file), name=file.stem, source=str(file))
    return load_yaml_spec(file)


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatSpecError(f"{file}: cannot read format spec: {exc}") from None


_TOP_KEYS = {"name", "bos", "eos", "eos_token", "separator", "system", "user", "model", "names",
             "name_template", "header_suffix", "label_policy", "stop_strings"}
_TEMPLATE_KEYS = {"name", "template", "label_policy", "stop_strings", "model_role"}
_ROLE_KEYS = {"prefix", "suffix"}


def load_yaml_spec(file: str | os.PathLike) -> ChatFormat:
    """Read and validate a YAML format spec (see the module docstring for its keys)."""
    import yaml

    file = Path(file)
    try:
        spec = yaml.safe_load(_read(file))
    except yaml.YAMLError as exc:
        raise FormatSpecError(f"{file}: not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise FormatSpecError(f"{file}: the spec must be a mapping of keys, got {type(spec).__name__}")

    def bad(key: str, why: str) -> FormatSpecError:
        return FormatSpecError(f"{file}: key {key!r} {why}")

    def string(key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise bad(key, f"must be a string, got {type(value).__name__} {value!r}")
        return value

    def choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise bad(key, f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def stops(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
            raise bad("stop_strings", f"must be a list of non-empty strings, got {value!r}")
        return tuple(value)

    name = string("name", spec.get("name", file.stem))
    policy = choice("label_policy", spec.get("label_policy", "model_turns"), LABEL_POLICIES)

    if "template" in spec:
        unknown = sorted(set(spec) - _TEMPLATE_KEYS)
        if unknown:
            raise bad(unknown[0], f"is not allowed with 'template' (allowed: {', '.join(sorted(_TEMPLATE_KEYS))})")
        template_path = (file.parent / string("template", spec["template"])).resolve()
        if not template_path.is_file():
            raise bad("template", f"names {template_path}, which does not exist")
        return jinja_format(_read(template_path), name=name, source=str(file), label_policy=policy,
                            stop_strings=stops(spec.get("stop_strings", [])),
                            model_role=string("model_role", spec.get("model_role", "assistant")))

    unknown = sorted(set(spec) - _TOP_KEYS)
    if unknown:
        raise bad(unknown[0], f"is unknown (allowed: {', '.join(sorted(_TOP_KEYS | {'template'}))})")

    def role(key: str, required: bool) -> tuple[str, str] | None:
        if key not in spec:
            if required:
                raise FormatSpecError(f"{file}: missing required key {key!r} (a mapping with prefix and suffix)")
            return None
        value = spec[key]
        if not isinstance(value, dict):
            raise bad(key, f"must be a mapping with keys prefix and suffix, got {value!r}")
        extra = sorted(set(value) - _ROLE_KEYS)
        if extra:
            raise bad(f"{key}.{extra[0]}", "is unknown (allowed: prefix, suffix)")
        if "prefix" not in value:
            raise FormatSpecError(f"{file}: missing required key '{key}.prefix'")
        return string(f"{key}.prefix", value["prefix"]), string(f"{key}.suffix", value.get("suffix", ""))

    user, model = role("user", True), role("model", True)
    system = role("system", False)
    bos = spec.get("bos", False)
    if not isinstance(bos, bool):
        raise bad("bos", f"must be true or false, got {bos!r}")
    eos = choice("eos", spec.get("eos", "none"), EOS_POLICIES)
    eos_token = spec.get("eos_token")
    if eos_token is not None:
        eos_token = string("eos_token", eos_token)
        if not eos_token:
            raise bad("eos_token", "must not be empty")
    separator = string("separator", spec.get("separator", ""))
    names = choice("names", spec.get("names", "content"), NAME_PLACEMENTS)
    template = string("name_template", spec.get("name_template", "{name}:" if names == "header" else "{name}: "))
    if template.count("{name}") != 1:
        raise bad("name_template", f"must contain '{{name}}' exactly once, got {template!r}")
    if "header_suffix" in spec and names != "header":
        raise bad("header_suffix", "is only allowed with names: header")
    header_suffix = string("header_suffix", spec.get("header_suffix", " "))
    if names == "header":
        template, nameless = template + header_suffix, header_suffix
    else:
        nameless = ""
    if policy != "all" and model[0][-1:] in (" ", "\t"):
        # Byte-level BPE and SentencePiece attach a space to the word after it: the first token of
        # every model turn would straddle the header and the trained span, and never train.
        raise bad("model.prefix", f"ends with a space ({model[0]!r}), which merges with the first trained "
                  "token; put the space in name_template (or header_suffix) instead")
    if system is None:  # like a nameless user turn (Herrsimian: `::::user: instructions`)
        system = (user[0] + nameless, user[1])
    return ChatFormat(
        name=name, add_bos=bos, system_prefix=system[0], system_suffix=system[1],
        role_prefix={"user": user[0], "model": model[0]}, turn_suffix=model[1],
        separator=separator, label_policy=policy, stop_strings=stops(spec.get("stop_strings", [])),
        role_suffix={"user": user[1], "model": model[1]}, eos_policy=eos, eos_token=eos_token,
        names=names, name_template=template, nameless=nameless, source=str(file),
    )


# --------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class Block:
    """Character offsets of one rendered block in the sample string."""
    kind: str       # "bos" | "system" | "user" | "model"
    turn: int       # index into the sample's turns; -1 for bos/system
    start: int      # first character of the block (its separator included)
    end: int        # one past the last character
    train_start: int  # trained characters: [train_start, end) when trained
    trained: bool
    content: tuple[tuple[int, int], ...] = ()  # free text (system prompt, name, message): never control tokens


@dataclass(frozen=True)
class Rendered:
    text: str
    blocks: list[Block]

    def trained_text(self) -> str:
        return "".join(self.text[b.train_start:b.end] for b in self.blocks if b.trained)

    def trained_spans(self) -> list[tuple[int, int]]:
        """Trained character spans, adjacent ones merged (a token across two trained blocks trains)."""
        spans: list[tuple[int, int]] = []
        for b in self.blocks:
            if b.trained and b.end > b.train_start:
                if spans and spans[-1][1] == b.train_start:
                    spans[-1] = (spans[-1][0], b.end)
                else:
                    spans.append((b.train_start, b.end))
        return spans

    def content_spans(self) -> list[tuple[int, int]]:
        return [span for b in self.blocks for span in b.content if span[1] > span[0]]


def resolve_label_policy(fmt: ChatFormat, label_policy: str | None) -> str:
    policy = label_policy or fmt.label_policy
    if policy not in LABEL_POLICIES:
        raise ValueError(f"unknown label policy {policy!r}; choose one of {list(LABEL_POLICIES)}")
    return policy


def _eos_text(fmt: ChatFormat, eos_token: str | None) -> str:
    text = fmt.eos_token or eos_token
    if not text:
        raise ValueError(f"format {fmt.name!r} appends EOS ({fmt.eos_policy}), and neither the format "
                         "nor the tokenizer defines an EOS token")
    return text


def render(sample: dict, fmt: ChatFormat, bos_token: str | None, turn_range: tuple[int, int] | None = None, *,
           eos_token: str | None = None, label_policy: str | None = None,
           train_from: int | None = None) -> Rendered:
    """Render system + turns[first:last] as one string with block offsets.

    `eos_token`: the tokenizer's EOS text, for formats with an EOS policy (a format's own `eos_token`
    wins). `label_policy`: overrides the format's default. `train_from`: turns before it are context
    only (overlapping windows); default: the first rendered turn.
    """
    if fmt.jinja is not None:
        return _render_jinja(sample, fmt, bos_token, turn_range, eos_token, label_policy, train_from)
    policy = resolve_label_policy(fmt, label_policy)
    turns = sample["turns"]
    n_turns = len(turns)
    first, last = turn_range or (0, n_turns)
    train_from = first if train_from is None else train_from
    train_all = policy == "all"
    eos = _eos_text(fmt, eos_token) if fmt.eos_policy in ("last", "every_turn") else ""
    last_model = -1
    if policy == "last_model_turn":
        last_model = next((i for i in range(last - 1, max(first, train_from) - 1, -1)
                           if turns[i]["role"] == "model"), -1)
    name_at = fmt.name_template.index("{name}")

    parts: list[str] = []
    blocks: list[Block] = []
    pos = 0
    if fmt.add_bos:
        if not bos_token:
            raise ValueError(f"format {fmt.name!r} needs a BOS token, and the tokenizer defines none")
        blocks.append(Block("bos", -1, 0, len(bos_token), 0, train_all))
        parts.append(bos_token)
        pos = len(bos_token)
    system = sample.get("system")
    if system:
        text = fmt.system_prefix + system + fmt.system_suffix
        at = pos + len(fmt.system_prefix)
        blocks.append(Block("system", -1, pos, pos + len(text), pos, train_all, ((at, at + len(system)),)))
        parts.append(text)
        pos += len(text)
    for index in range(first, last):
        turn = turns[index]
        role = turn["role"]
        prefix = fmt.role_prefix.get(role)
        if prefix is None:
            raise ValueError(f"sample {sample.get('sample_id')!r} turn {index} has role {role!r}; "
                             f"format {fmt.name!r} renders {sorted(fmt.role_prefix)}")
        sep = fmt.separator if blocks and blocks[-1].kind != "bos" else ""
        name = turn.get("name")
        slot = fmt.name_prefix(name)
        body = turn["text"]
        tail = eos if eos and (fmt.eos_policy == "every_turn" or index == n_turns - 1) else ""
        text = sep + prefix + slot + body + fmt.suffix(role) + tail
        header_end = pos + len(sep) + len(prefix)
        body_at = header_end + len(slot)
        content = ((body_at, body_at + len(body)),)
        if name and fmt.names != "none":
            content = ((header_end + name_at, header_end + name_at + len(name)),) + content
        trained = index >= train_from and (
            train_all or (role == "model" and (policy == "model_turns" or index == last_model)))
        blocks.append(Block(role, index, pos, pos + len(text), pos if train_all else header_end, trained, content))
        parts.append(text)
        pos += len(text)
    return Rendered("".join(parts), blocks)


def generation_prompt(sample: dict, fmt: ChatFormat, bos_token: str | None, upto: int, speaker: str, *,
                      eos_token: str | None = None) -> str:
    """Context of turns[0:upto] followed by the header and name of the next model turn (`…Name:`)."""
    probe = dict(sample, turns=list(sample["turns"][:upto]) + [{"role": "model", "name": speaker, "text": _PROBE}])
    rendered = render(probe, fmt, bos_token, eos_token=eos_token)
    return rendered.text[:rendered.blocks[-1].content[-1][0]].rstrip(" ")


# --------------------------------------------------------------------------------------------
# Chat templates


def chat_template(fmt: ChatFormat) -> str:
    """A Hugging Face chat template (Jinja) reproducing `render` for messages with role and name.

    Roles: system, user, and model/assistant; roles need not alternate; `name` is optional per
    message. `add_generation_prompt` appends the separator and the model header (the name slot is
    left to the caller or the model). Jinja-defined formats return their own template.
    """
    if fmt.jinja is not None:
        return fmt.jinja

    def lit(s: str) -> str:
        return "{{ " + repr(s) + " }}" if s else ""

    before, after = fmt.name_template.split("{name}")
    if fmt.names == "none":
        name_part = lit(fmt.nameless)
    else:
        name_part = ("{% if message.name %}{{ " + repr(before) + " + message.name + " + repr(after) + " }}"
                     + ("{% else %}" + lit(fmt.nameless) if fmt.nameless else "") + "{% endif %}")
    eos = lit(fmt.eos_token) if fmt.eos_token else "{{ eos_token }}"
    if fmt.eos_policy == "every_turn":
        eos_part = "{% if message.role != 'system' %}" + eos + "{% endif %}"
    elif fmt.eos_policy == "last":
        eos_part = "{% if loop.last and message.role != 'system' and not add_generation_prompt %}" + eos + "{% endif %}"
    else:
        eos_part = ""
    return (
        ("{{ bos_token }}" if fmt.add_bos else "")
        + "{% for message in messages %}"
        + "{% if not loop.first %}" + lit(fmt.separator) + "{% endif %}"
        + "{% if message.role == 'system' %}" + lit(fmt.system_prefix) + "{{ message.content }}" + lit(fmt.system_suffix)
        + "{% elif message.role == 'user' %}" + lit(fmt.role_prefix["user"]) + name_part + "{{ message.content }}"
        + lit(fmt.suffix("user")) + eos_part
        + "{% else %}" + lit(fmt.role_prefix["model"]) + name_part + "{{ message.content }}" + lit(fmt.suffix("model"))
        + eos_part
        + "{% endif %}{% endfor %}"
        + "{% if add_generation_prompt %}{% if messages %}" + lit(fmt.separator) + "{% endif %}"
        + lit(fmt.role_prefix["model"]) + "{% endif %}"
    )


def sample_messages(sample: dict, fmt: ChatFormat | None = None) -> list[dict]:
    """The sample as chat messages, for `tokenizer.apply_chat_template`.

    Model turns get role "model", or the format's `model_role` (Jinja formats: "assistant").
    """
    model_role = fmt.model_role if fmt is not None else "model"
    messages = [{"role": "system", "content": sample["system"]}] if sample.get("system") else []
    messages += [{"role": model_role if t["role"] == "model" else t["role"], "name": t["name"], "content": t["text"]}
                 for t in sample["turns"]]
    return messages


# --------------------------------------------------------------------------------------------
# Jinja-defined formats


@functools.lru_cache(maxsize=32)
def _compile(source: str):
    try:  # the very environment apply_chat_template uses
        from transformers.utils.chat_template_utils import _compile_jinja_template
        return _compile_jinja_template(source)
    except (ImportError, AttributeError):
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals["raise_exception"] = raise_exception
        return env.from_string(source)


def _jinja_render(fmt: ChatFormat, messages: list[dict], bos: str, eos: str, generation: bool = False) -> str:
    import jinja2

    try:
        return _compile(fmt.jinja).render(messages=messages, bos_token=bos, eos_token=eos,
                                          add_generation_prompt=generation)
    except jinja2.TemplateError as exc:
        raise ValueError(f"{fmt.source or fmt.name}: chat template failed on {len(messages)} message(s): {exc}") from None


_PROBE = "\x1a"   # sentinel characters used to probe a template's structure
_BOS_PROBE, _EOS_PROBE = "\x02", "\x03"


def jinja_format(template: str, *, name: str, source: str | None = None, label_policy: str = "model_turns",
                 stop_strings: tuple[str, ...] = (), model_role: str = "assistant") -> ChatFormat:
    """A format defined by a Jinja chat template (see the module docstring for the approach).

    The template is probed once with sentinel messages to fill `add_bos`, `role_prefix`,
    `turn_suffix` and the system prefix/suffix (used by evaluation helpers; rendering always goes
    through the template itself).
    """
    import jinja2

    where = source or name
    try:
        _compile(template)
    except jinja2.TemplateSyntaxError as exc:
        raise FormatSpecError(f"{where}: Jinja syntax error at line {exc.lineno}: {exc.message}") from None
    if label_policy not in LABEL_POLICIES:
        raise FormatSpecError(f"{where}: key 'label_policy' must be one of {', '.join(LABEL_POLICIES)}; "
                              f"got {label_policy!r}")
    fmt = ChatFormat(name=name, add_bos=False, system_prefix="", system_suffix="",
                     role_prefix={"user": "", "model": ""}, turn_suffix="", separator="",
                     label_policy=label_policy, stop_strings=tuple(stop_strings), eos_policy="template",
                     jinja=template, model_role=model_role, source=where)
    clean = str.maketrans("", "", _BOS_PROBE + _EOS_PROBE)

    def block_of(messages: list[dict]) -> tuple[str, str]:
        """(text before, text after) the last message's content in its block."""
        before = _jinja_render(fmt, messages[:-1], _BOS_PROBE, _EOS_PROBE)
        after = _jinja_render(fmt, messages, _BOS_PROBE, _EOS_PROBE)
        block = after[len(os.path.commonprefix([before, after])):]
        head, _, tail = block.partition(messages[-1]["content"])
        return head.translate(clean), tail.translate(clean)

    try:
        user = {"role": "user", "content": _PROBE + "u"}
        add_bos = _jinja_render(fmt, [user], _BOS_PROBE, _EOS_PROBE).startswith(_BOS_PROBE)
        system_prefix, system_suffix = block_of([{"role": "system", "content": _PROBE + "s"}])
        user_prefix, user_suffix = block_of([user])
        model_prefix, model_suffix = block_of([user, {"role": model_role, "content": _PROBE + "m"}])
    except ValueError as exc:
        raise FormatSpecError(f"{where}: the template cannot render a plain system/user/{model_role} "
                              f"conversation: {exc}") from None
    return replace(fmt, add_bos=add_bos, system_prefix=system_prefix, system_suffix=system_suffix,
                   role_prefix={"user": user_prefix, "model": model_prefix}, turn_suffix=model_suffix,
                   role_suffix={"user": user_suffix, "model": model_suffix})


def _block_starts(fmt: ChatFormat, renders: list[str]) -> list[int]:
    """Message k's block starts where the render of messages[:k+1] departs from that of messages[:k]."""
    text = renders[-1]
    starts = []
    for k in range(len(renders) - 1):
        before, after = renders[k], renders[k + 1]
        start = len(before) if after.startswith(before) else len(os.path.commonprefix([before, after]))
        if text[:start] != after[:start] or (starts and start < starts[-1]):
            raise ValueError(f"{fmt.source or fmt.name}: chat template is not prefix-stable: adding message "
                             f"{k + 1} rewrites earlier text; use a YAML format spec instead")
        starts.append(start)
    return starts + [len(text)]


def _jinja_blocks(fmt: ChatFormat, messages: list[dict], bos: str, eos: str) -> tuple[str, list[int]]:
    """The rendered text and the start of each message's block (plus the end of the text).

    The prefixes are rendered with one-character stand-ins for BOS/EOS, so that text a template
    prints only after the last message (`{% if loop.last %}{{ eos_token }}`) never shares leading
    characters with the next message's header; positions are then mapped onto the real render.
    """
    stand_ins = _BOS_PROBE + _EOS_PROBE
    if not any(c in (m.get("content") or "") + (m.get("name") or "") for m in messages for c in stand_ins):
        renders = [_jinja_render(fmt, messages[:k], _BOS_PROBE, _EOS_PROBE) for k in range(len(messages) + 1)]
        text = _jinja_render(fmt, messages, bos, eos)
        if renders[-1].replace(_BOS_PROBE, bos).replace(_EOS_PROBE, eos) == text:
            probe_starts = _block_starts(fmt, renders)
            starts, done, extra = [], 0, 0
            for p in probe_starts:
                chunk = renders[-1][done:p]
                extra += chunk.count(_BOS_PROBE) * (len(bos) - 1) + chunk.count(_EOS_PROBE) * (len(eos) - 1)
                starts.append(p + extra)
                done = p
            return text, starts
    renders = [_jinja_render(fmt, messages[:k], bos, eos) for k in range(len(messages) + 1)]
    return renders[-1], _block_starts(fmt, renders)


def _render_jinja(sample: dict, fmt: ChatFormat, bos_token: str | None, turn_range: tuple[int, int] | None,
                  eos_token: str | None, label_policy: str | None, train_from: int | None) -> Rendered:
    policy = resolve_label_policy(fmt, label_policy)
    turns = sample["turns"]
    first, last = turn_range or (0, len(turns))
    train_from = first if train_from is None else train_from
    if fmt.add_bos and not bos_token:
        raise ValueError(f"format {fmt.name!r} needs a BOS token, and the tokenizer defines none")
    bos, eos = bos_token or "", eos_token or ""
    messages: list[dict] = []
    turn_of: list[int] = []
    if sample.get("system"):
        messages.append({"role": "system", "content": sample["system"]})
        turn_of.append(-1)
    for index in range(first, last):
        turn = turns[index]
        role = fmt.model_role if turn["role"] == "model" else turn["role"]
        messages.append({"role": role, "name": turn.get("name"), "content": turn["text"]})
        turn_of.append(index)
    text, starts = _jinja_blocks(fmt, messages, bos, eos)
    train_all = policy == "all"
    last_model = -1
    if policy == "last_model_turn":
        last_model = next((i for i in range(last - 1, max(first, train_from) - 1, -1)
                           if turns[i]["role"] == "model"), -1)
    blocks: list[Block] = []
    if starts[0] > 0:
        blocks.append(Block("bos", -1, 0, starts[0], 0, train_all))
    for k, message in enumerate(messages):
        start, end = starts[k], starts[k + 1]
        content = message["content"]
        at = text.find(content, start, end) if content else -1
        if content and at < 0:
            raise ValueError(f"{fmt.source or fmt.name}: message {k} ({message['role']}) is not printed verbatim "
                             "by the chat template (e.g. `| trim`); its trained span cannot be located")
        if at < 0:  # empty content: right before the block's trailing literal text
            at = end - len(fmt.suffix("model" if message["role"] == fmt.model_role else message["role"]))
            at = max(start, min(at, end))
        spans = [(at, at + len(content))]
        train_start = at
        index = turn_of[k]
        name = message.get("name")
        if name:
            name_at = text.rfind(name, start, at)
            if name_at >= 0:
                spans.insert(0, (name_at, name_at + len(name)))
                train_start = name_at
        if index < 0:
            blocks.append(Block("system", -1, start, end, start, train_all, tuple(spans)))
            continue
        role = turns[index]["role"]
        trained = index >= train_from and (
            train_all or (role == "model" and (policy == "model_turns" or index == last_model)))
        blocks.append(Block(role, index, start, end, start if train_all else train_start, trained, tuple(spans)))
    return Rendered(text, blocks)
