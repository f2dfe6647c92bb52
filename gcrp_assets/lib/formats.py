"""Prompt formats: render a sample to one string and record, per block, which characters train.

Formats (names used in configuration):
- `inst`: the 12B Party card's `[INST]role … [/INST]` group format, BOS once, turns need not alternate;
  model turns train on `Name: text[/INST]`.
- `chatml`: ChatML with the speaker's name inside the content; assistant turns train on
  `Name: text<|im_end|>`.
- `herrsimian`: the 8B card's `::::user:Name:` / `::::assistant:Name:` raw text, BOS required,
  no EOS, no masking (everything trains).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChatFormat:
    name: str
    add_bos: bool
    system_prefix: str
    system_suffix: str
    role_prefix: dict[str, str]      # "user"/"model" -> header before the name
    turn_suffix: str                 # terminator after a turn's text
    separator: str                   # between blocks
    label_policy: str                # "model_turns" | "all"
    stop_strings: tuple[str, ...] = field(default=())

    def name_prefix(self, name: str | None) -> str:
        return f"{name}: " if name else ""


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
    ),
}


def get_format(name: str) -> ChatFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; choose one of {sorted(FORMATS)}") from None


def _name_prefix(fmt: ChatFormat, name: str | None) -> str:
    # Herrsimian: `::::user:Anon: text` — name right after the header, one space after the colon.
    return f"{name}: " if name else ("" if fmt.name != "herrsimian" else " ")


@dataclass(frozen=True)
class Block:
    """Character offsets of one rendered block in the sample string."""
    kind: str       # "bos" | "system" | "user" | "model"
    turn: int       # index into the sample's turns; -1 for bos/system
    start: int      # first character of the block (its separator included)
    end: int        # one past the last character
    train_start: int  # trained characters: [train_start, end) when trained
    trained: bool


@dataclass(frozen=True)
class Rendered:
    text: str
    blocks: list[Block]

    def trained_text(self) -> str:
        return "".join(self.text[b.train_start:b.end] for b in self.blocks if b.trained)


def render(sample: dict, fmt: ChatFormat, bos_token: str | None, turn_range: tuple[int, int] | None = None) -> Rendered:
    """Render system + turns[first:last] as one string with block offsets."""
    parts: list[str] = []
    blocks: list[Block] = []
    pos = 0

    def add(kind: str, turn: int, text: str, train_offset: int, trained: bool) -> None:
        nonlocal pos
        blocks.append(Block(kind, turn, pos, pos + len(text), pos + train_offset, trained))
        parts.append(text)
        pos += len(text)

    train_all = fmt.label_policy == "all"
    if fmt.add_bos:
        if not bos_token:
            raise ValueError(f"format {fmt.name!r} needs a BOS token, and the tokenizer defines none")
        add("bos", -1, bos_token, 0, train_all)
    if sample.get("system"):
        add("system", -1, fmt.system_prefix + sample["system"] + fmt.system_suffix, 0, train_all)
    first, last = turn_range or (0, len(sample["turns"]))
    for index in range(first, last):
        turn = sample["turns"][index]
        sep = fmt.separator if blocks and blocks[-1].kind != "bos" else ""
        header = sep + fmt.role_prefix[turn["role"]]
        body = _name_prefix(fmt, turn["name"]) + turn["text"] + fmt.turn_suffix
        trained = train_all or turn["role"] == "model"
        add(turn["role"], index, header + body, 0 if train_all else len(header), trained)
    return Rendered("".join(parts), blocks)


def generation_prompt(sample: dict, fmt: ChatFormat, bos_token: str | None, upto: int, speaker: str) -> str:
    """Context of turns[0:upto] followed by the header and name of the next model turn."""
    context = render(sample, fmt, bos_token, (0, upto)).text
    return context + fmt.separator + fmt.role_prefix["model"] + f"{speaker}:"


def chat_template(fmt: ChatFormat) -> str:
    """A Hugging Face chat template (Jinja) reproducing `render` for messages with role and name.

    Roles: system, user, and model/assistant; roles need not alternate.
    """
    def lit(s: str) -> str:
        return "{{ " + repr(s) + " }}" if s else ""

    name_part = ("{% if message.name %}{{ message.name + ': ' }}{% else %}{{ ' ' }}{% endif %}"
                 if fmt.name == "herrsimian" else "{% if message.name %}{{ message.name + ': ' }}{% endif %}")
    return (
        ("{{ bos_token }}" if fmt.add_bos else "")
        + "{% for message in messages %}"
        + "{% if not loop.first %}" + lit(fmt.separator) + "{% endif %}"
        + "{% if message.role == 'system' %}" + lit(fmt.system_prefix) + "{{ message.content }}" + lit(fmt.system_suffix)
        + "{% elif message.role == 'user' %}" + lit(fmt.role_prefix["user"]) + name_part + "{{ message.content }}" + lit(fmt.turn_suffix)
        + "{% else %}" + lit(fmt.role_prefix["model"]) + name_part + "{{ message.content }}" + lit(fmt.turn_suffix)
        + "{% endif %}{% endfor %}"
        + "{% if add_generation_prompt %}" + lit(fmt.separator) + lit(fmt.role_prefix["model"]) + "{% endif %}"
    )


def sample_messages(sample: dict) -> list[dict]:
    """The sample as chat messages, for `tokenizer.apply_chat_template`."""
    messages = [{"role": "system", "content": sample["system"]}] if sample.get("system") else []
    messages += [{"role": t["role"], "name": t["name"], "content": t["text"]} for t in sample["turns"]]
    return messages
