"""Optional rewrite of character sheets by a local language model, for sheets the rules cannot parse.

The 12B Party card rewrote its messy sheets into one uniform sheet with a language model. Here the
rule parser (`sheets.parse_sheet`) does that for labelled sheets; `LLMSheetRewriter` (a
`sheets.SheetRewriter`, off by default: `PromptConfig.sheet_rewrite`) asks a local Hugging Face causal
LM only for the sheets the rules cannot parse, and keeps only what the sheet supports.

- *Cannot parse*: the sheet has words, but the rules recognise fewer than `sheet_rewrite_min_fields`
  template fields in it, not counting the name field and "Other Information" (so a prose sheet, or one whose labels
  are all unknown, which the rules can only file under Other Information). An empty sheet is never
  sent (there is nothing to rewrite, only things to invent).
- *Prompt* (`build_messages`): a system message saying to copy facts from the sheet only and leave out
  fields the sheet does not give, and a user message with the character's display name, the
  template's field names (one `Field: value` per line) and the sheet. Rendered with the tokenizer's
  chat template when it has one, else as plain text.
- *Decoding*: greedy (`do_sample=False`, one beam), at most `sheet_rewrite_max_new_tokens`: the same
  model and prompt give the same text.
- *Cache*: the raw model output is stored as JSON under `cache_dir/<key[:2]>/<key>.json`, where the
  key is the sha256 of (sheet text, display name, model hash, prompt messages, prompt version,
  generation settings); the tokenizer's chat template that renders the messages is part of the model
  hash. A cache hit loads nothing (neither tokenizer nor model) and generates nothing.
- *Nothing invented*: the output is parsed with the same rules (`parse_sheet`) into template fields.
  The name field is dropped (the display name always comes from the thread). A field value is kept
  only when at least `sheet_rewrite_min_support` of its words (letters/digits runs, case-folded, counted
  with repetition) occur in the source sheet or the display name; other values are dropped and counted.
  If what is left recognises no more template fields than the rules did, the rule result is used
  instead (a fall-back, counted). So the rewrite can only move the sheet's own words into fields.

`stats` counts, per rewriter: `rule_parsed` (the rules sufficed), `rewrite_attempts`, `cache_hits`,
`generated`, `rewritten` (the rewrite was used), `fallbacks`, `values_dropped`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gcrp_assets.lib.training.base_model import model_dir_hash
from gcrp_assets.lib.hashing import sha256_json
from gcrp_assets.lib.prompts.sheets import SheetTemplate, parse_sheet, render_sheet

PROMPT_VERSION = 1
_WORD = re.compile(r"[^\W_]+")

SYSTEM_PROMPT = ("You rewrite role-play character sheets into a fixed template. Copy facts from the sheet only, "
                 "using its own words; never invent or guess. Leave out every field the sheet says nothing about. "
                 "Answer with the filled fields only, one per line, as `Field: value`.")


@dataclass(frozen=True)
class RewriteSettings:
    """The rewrite's thresholds and decoding budget (also `PromptConfig`'s fields: one declaration,
    `orchestration.settings`)."""
    sheet_rewrite_min_fields: int = field(default=2, metadata={
        "help": "The rules 'cannot parse' a sheet with words in which they recognise fewer template fields than "
                "this (name and Other Information not counted)."})
    sheet_rewrite_min_support: float = field(default=0.75, metadata={
        "help": "Keep a rewritten field value only when at least this share of its words occurs in the source "
                "sheet."})
    sheet_rewrite_max_new_tokens: int = field(default=384, metadata={
        "help": "Greedy decoding budget per rewritten sheet."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.sheet_rewrite_min_support <= 1.0:
            raise ValueError(f"sheet_rewrite_min_support must be in [0, 1], got {self.sheet_rewrite_min_support}")
        if self.sheet_rewrite_min_fields < 1 or self.sheet_rewrite_max_new_tokens < 1:
            raise ValueError("sheet_rewrite_min_fields and sheet_rewrite_max_new_tokens must be >= 1")

    def generation(self) -> dict:
        """The generation settings (part of the cache key): greedy."""
        return {"do_sample": False, "num_beams": 1, "max_new_tokens": self.sheet_rewrite_max_new_tokens}


def words(text: str | None) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text or "")]


def recognized_fields(fields: dict[str, str], template: SheetTemplate) -> set[str]:
    """Template fields filled, other than the name field and Other Information."""
    return {f for f, v in fields.items() if v.strip() and f not in (template.name_field, template.other_field)}


def cannot_parse(sheet_text: str | None, fields: dict[str, str], template: SheetTemplate, min_fields: int) -> bool:
    """A sheet with words in which the rules recognised fewer than `min_fields` template fields."""
    return bool(words(sheet_text)) and len(recognized_fields(fields, template)) < min_fields


def support(value: str, source: set[str]) -> float:
    """Share of the value's words (with repetition) found in `source`; 1.0 for a value without words."""
    found = words(value)
    return sum(w in source for w in found) / len(found) if found else 1.0


def build_messages(name: str, sheet_text: str, template: SheetTemplate) -> list[dict]:
    fields = "\n".join(f"- {f.name}" for f in template.fields if f.name != template.name_field)
    user = (f"Character: {name}\n\nTemplate fields:\n{fields}\n\nSheet:\n<<<\n{sheet_text.strip()}\n>>>\n\n"
            "Write the filled fields, one `Field: value` per line, nothing else.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


class CausalLMGenerator:
    """Greedy generation with a local Hugging Face causal LM, loaded on first use (never from a hub)."""

    def __init__(self, model_dir: Path, settings: RewriteSettings = RewriteSettings()):
        self.model_dir, self.settings = Path(model_dir), settings
        self.model = self.tokenizer = None
        self.calls = 0

    def render(self, messages: list[dict]) -> str:
        """The prompt text the model sees (chat template when the tokenizer has one)."""
        self._load_tokenizer()
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def _load_tokenizer(self) -> None:
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)

    def _load(self) -> None:
        self._load_tokenizer()
        if self.model is None:
            import torch
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, local_files_only=True,
                                                              torch_dtype=torch.float32)
            self.model.eval()

    def __call__(self, prompt: str) -> str:
        import torch

        self._load()
        self.calls += 1
        tok = self.tokenizer
        has_template = bool(getattr(tok, "chat_template", None))
        encoded = tok(prompt, return_tensors="pt", add_special_tokens=not has_template)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**encoded, **self.settings.generation(), pad_token_id=pad,
                                      temperature=None, top_p=None, top_k=None)
        return tok.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True).strip()


class LLMSheetRewriter:
    """A `SheetRewriter`: the rules first, the model only for sheets they cannot parse (module docstring).

    `generator` (a `CausalLMGenerator` by default) needs `render(messages) -> prompt text` and
    `__call__(prompt) -> generated text`; the model is loaded on the first cache miss only.
    """

    def __init__(self, model_dir: Path, cache_dir: Path, model_hash: str | None = None,
                 settings: RewriteSettings = RewriteSettings(), generator: CausalLMGenerator | None = None):
        self.model_dir = Path(model_dir)
        self.cache_dir = Path(cache_dir)
        self.settings = settings
        self.model_hash = model_hash or model_dir_hash(self.model_dir)
        self.generator = generator or CausalLMGenerator(self.model_dir, settings)
        self.stats: Counter[str] = Counter()

    def fingerprint(self) -> dict:
        """What the rewritten sheets depend on besides the sheets: for the stage's fingerprint."""
        return {"model_hash": self.model_hash, "prompt_version": PROMPT_VERSION, "system_prompt": SYSTEM_PROMPT,
                "settings": asdict(self.settings)}

    def cache_key(self, name: str, sheet_text: str, messages: list[dict]) -> str:
        return sha256_json({"sheet": sheet_text, "name": name, "model_hash": self.model_hash, "prompt": messages,
                            "prompt_version": PROMPT_VERSION, "generation": self.settings.generation()})

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def raw_rewrite(self, name: str, sheet_text: str, template: SheetTemplate) -> str:
        """The model's text for this sheet, from the cache or generated (and then cached)."""
        messages = build_messages(name, sheet_text, template)
        key = self.cache_key(name, sheet_text, messages)
        path = self._cache_path(key)
        if path.is_file():
            self.stats["cache_hits"] += 1
            return json.loads(path.read_text("utf-8"))["output"]
        output = self.generator(self.generator.render(messages))
        self.stats["generated"] += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "model_hash": self.model_hash, "name": name,
                                   "generation": self.settings.generation(), "output": output},
                                  ensure_ascii=False, indent=1), "utf-8")
        os.replace(tmp, path)
        return output

    def rewrite_fields(self, name: str, sheet_text: str, template: SheetTemplate,
                       rule_fields: dict[str, str]) -> dict[str, str] | None:
        """The supported fields of the model's rewrite, or None to fall back to `rule_fields`."""
        produced = parse_sheet(self.raw_rewrite(name, sheet_text, template), template, name)
        source = set(words(sheet_text)) | set(words(name))
        kept: dict[str, str] = {}
        for key, value in produced.items():
            if key == template.name_field:
                continue
            if support(value, source) >= self.settings.sheet_rewrite_min_support:
                kept[key] = value
            else:
                self.stats["values_dropped"] += 1
        if len(recognized_fields(kept, template)) <= len(recognized_fields(rule_fields, template)):
            return None
        return kept

    def __call__(self, name: str, sheet_text: str | None, template: SheetTemplate) -> str:
        rule_fields = parse_sheet(sheet_text or "", template, name)
        if not cannot_parse(sheet_text, rule_fields, template, self.settings.sheet_rewrite_min_fields):
            self.stats["rule_parsed"] += 1
            return render_sheet(name, rule_fields, template)
        self.stats["rewrite_attempts"] += 1
        fields = self.rewrite_fields(name, sheet_text or "", template, rule_fields)
        if fields is None:
            self.stats["fallbacks"] += 1
            return render_sheet(name, rule_fields, template)
        self.stats["rewritten"] += 1
        return render_sheet(name, fields, template)

