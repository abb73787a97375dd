"""The prompt template: the one place `run` and `finetune` agree on what the model sees.

A template is plain text with a `{product}` and (optionally) a `{description}` placeholder.
Other braces are text, with no escapes (`{{` stays `{{`), except that a word in braces is
refused as a misspelt placeholder.
The default is the prompt the original AdPulse adapter was trained on. An adapter directory
written by `finetune` carries its template in `adpulse.json`, so `run --adapter DIR` uses the
template the adapter learned.

A chat template renders the same template through the tokenizer's chat template instead:
its instruction (the text before the first placeholder line or `###` header) is the system
message, its placeholder lines are the user message, and the generation prompt follows, so
an instruct model writes the ad as its answer.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from adpulse_batch.errors import SettingsError

INSTRUCTION = (
    "You are the world's best Marketing expert. Below is a product and description, please write an "
    "exceptional ad for this product which will capture the readers attention and increase the product "
    "recall value."
)
DEFAULT_TEMPLATE_TEXT = INSTRUCTION + "\n\n### Product and Description:\n{product}: {description}\n\n### Ad:\n"

# The metadata file an adapter directory carries beside the PEFT files.
ADAPTER_METADATA = "adpulse.json"

_PLACEHOLDER = re.compile(r"\{(product|description)\}")
# A word in braces looks like a placeholder: one that is neither of the two is a misspelt one
# (`{descripton}`, `{Product}`), which would reach the model as text. Other braces are text.
_WORD_IN_BRACES = re.compile(r"\{\s*\w+\s*\}")
# Runs of whitespace, control characters (Unicode category Cc: U+0000-001F, U+007F-009F)
# and line or paragraph separators (U+2028, U+2029): each run becomes one space.
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@dataclass(frozen=True)
class Template:
    """A prompt template: `text` with `{product}` and `{description}` placeholders; `chat`:
    rendered through the tokenizer's chat template (see `messages`)."""

    text: str = DEFAULT_TEMPLATE_TEXT
    chat: bool = False

    def __post_init__(self):
        if "{product}" not in self.text:
            raise SettingsError("the prompt template has no {product} placeholder; add one where the product goes")
        _check_placeholders(self.text, "the prompt template")

    @classmethod
    def from_file(cls, path: str | Path) -> Template:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise SettingsError(f"--template {path}: cannot read it ({error.strerror})") from None
        except UnicodeDecodeError:
            raise SettingsError(f"--template {path}: not UTF-8 text") from None
        if "{product}" not in text:
            raise SettingsError(f"--template {path} has no {{product}} placeholder; add one where the product goes")
        _check_placeholders(text, f"--template {path}")
        return cls(text)

    @property
    def prefix(self) -> str:
        """The text before the first placeholder: the same for every row of a catalog."""
        return self.text[: _PLACEHOLDER.search(self.text).start()]

    def render(self, product: str, description: str) -> str:
        """The plain prompt for one row. Lines that held an empty field lose their trailing
        spaces, so a row without a description reads `Harem pants:` rather than `Harem pants: `."""
        values = {"product": product, "description": description}
        lines = []
        for line in self.text.split("\n"):
            if _PLACEHOLDER.search(line):
                line = _PLACEHOLDER.sub(lambda m: values[m.group(1)], line).rstrip()
            lines.append(line)
        return "\n".join(lines)

    def messages(self, product: str, description: str) -> list[dict[str, str]]:
        """The chat messages for one row: the instruction (the lines before the first one
        that holds a placeholder or starts a `###` section) as the system message, none when
        there is no instruction; the rest, rendered, as the user message, less its `###`
        section headers: the chat template marks the turns."""
        lines = self.render(product, description).split("\n")
        template_lines = self.text.split("\n")
        first = next(i for i, line in enumerate(template_lines) if _PLACEHOLDER.search(line) or line.startswith("###"))
        instruction = "\n".join(lines[:first]).strip()
        user = "\n".join(line for line in lines[first:] if not line.startswith("###")).strip()
        return ([{"role": "system", "content": instruction}] if instruction else []) + [{"role": "user", "content": user}]


def _check_placeholders(text: str, where: str) -> None:
    unknown = list(dict.fromkeys(m.group() for m in _WORD_IN_BRACES.finditer(text) if not _PLACEHOLDER.fullmatch(m.group())))
    if unknown:
        names = "an unknown placeholder" if len(unknown) == 1 else "unknown placeholders"
        raise SettingsError(f"{where} has {names} {', '.join(unknown)}; the known ones are {{product}} and {{description}}")


def field_text(value) -> str:
    """A catalog cell as prompt text: None and NaN are empty, numbers are text, control
    characters are dropped and runs of whitespace (newlines included) become one space."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return one_line(str(value))


def one_line(text: str) -> str:
    """`text` on one line: control characters and runs of whitespace become one space."""
    return _BREAKS.sub(" ", text).strip()


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a piece of text (a field, an ad), no special tokens added."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt and its token ids; `truncated` when fields were cut to fit."""

    text: str
    ids: list[int]
    truncated: bool = False


# Variables some chat templates read, fixed so that a row's prompt is the same every night:
# Llama 3's writes today's date into the system message unless given one (this is its own
# default), and Qwen3's lets the model think aloud before answering unless told not to.
# Templates that do not read them ignore them.
CHAT_TEMPLATE_KWARGS = {"date_string": "26 Jul 2024", "enable_thinking": False}

# Stands in for the product to find where a row's own text starts in a chat rendering: the
# text before it is what every row shares.
_SENTINEL = "\ue000"


class PromptBuilder:
    """A row's fields as the token ids the model sees: rendered by the template (as chat
    when it says so), encoded as the tokenizer encodes by default, cut to `max_tokens`.

    Plain prompts get the special tokens the tokenizer adds by default (Llama's BOS; BLOOM
    and Qwen add none), exactly what transformers' own `generate` is fed. A chat rendering
    holds its special tokens as text, so it is encoded without adding any, as
    `apply_chat_template` does.
    """

    def __init__(self, template: Template, tokenizer, max_tokens: int):
        self.template, self.tokenizer, self.max_tokens = template, tokenizer, max_tokens
        # Some chat templates (Gemma's) refuse a system message: the instruction then opens
        # the user message, as their model cards advise.
        self.system = True
        if template.chat:
            from jinja2 import TemplateError

            try:
                self._chat(template.messages("x", "y"))
            except TemplateError:  # raised by the template itself (`raise_exception`)
                self.system = False

    def text(self, product: str, description: str) -> str:
        """The prompt text of one row, before any cut."""
        if not self.template.chat:
            return self.template.render(product, description)
        return self._chat(self.template.messages(product, description))

    def encode(self, text: str) -> list[int]:
        return self.encode_many([text])[0]

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=not self.template.chat)["input_ids"]

    def build(self, product: str, description: str, *, text: str | None = None) -> Prompt:
        """The prompt of one row; a prompt over `max_tokens` has its description (then its
        product) cut to fit. The template itself is never cut: the model must still see
        where the ad goes. `text`: the row's prompt text when already rendered."""
        text = text if text is not None else self.text(product, description)
        ids = self.encode(text)
        if len(ids) <= self.max_tokens:
            return Prompt(text, ids)
        while len(ids) > self.max_tokens:
            excess = len(ids) - self.max_tokens
            if description:
                description = self._cut_tokens(description, excess)
            elif product:
                product = self._cut_tokens(product, excess)
            else:
                raise SettingsError(
                    f"--max-prompt-tokens {self.max_tokens} is less than the template alone needs ({len(ids)} tokens); raise it"
                )
            text = self.text(product, description)
            ids = self.encode(text)
        return Prompt(text, ids, truncated=True)

    def check(self) -> None:
        """Fail when the template alone does not fit `max_tokens`."""
        self.build("", "")

    def prefix_ids(self) -> list[int]:
        """Token ids every prompt starts with: those of the text before the row's own, less
        the last one (tokenized together with a row's text it could merge with what follows).
        Empty when the rendering does not put the row after a shared text."""
        if self.template.chat:
            text = self.text(_SENTINEL, "")
            prefix = text[: text.index(_SENTINEL)] if _SENTINEL in text else ""
        else:
            prefix = self.template.prefix
        return self.encode(prefix)[:-1] if prefix else []

    def _chat(self, messages: list[dict[str, str]]) -> str:
        if not self.system and messages[0]["role"] == "system":
            system, user = messages
            messages = [{"role": "user", "content": f"{system['content']}\n\n{user['content']}"}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **CHAT_TEMPLATE_KWARGS)

    def _cut_tokens(self, text: str, excess: int) -> str:
        """`text` less at least `excess` tokens from its end, cut cleanly (no broken character)."""
        ids = encode(self.tokenizer, text)
        keep = max(0, len(ids) - excess - 1)  # one spare: re-tokenizing at the cut can merge tokens
        return self.tokenizer.decode(ids[:keep]).replace("\ufffd", "").rstrip()


def adapter_metadata(adapter_dir: str | Path) -> dict | None:
    """The adpulse metadata an adapter directory carries, or None when it has none."""
    path = Path(adapter_dir) / ADAPTER_METADATA
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SettingsError(f"{path} is not readable adapter metadata ({error}); re-run finetune or remove it") from None


def adapter_template(adapter_dir: str | Path) -> Template | None:
    """The template an adapter was trained with (and whether as chat), when its directory records one."""
    metadata = adapter_metadata(adapter_dir)
    if metadata is None or "template" not in metadata:
        return None
    return Template(metadata["template"], chat=bool(metadata.get("chat", False)))
