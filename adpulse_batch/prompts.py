"""The prompt template: the one place `run` and `finetune` agree on what the model sees.

A template is plain text with a `{product}` and (optionally) a `{description}` placeholder.
Other braces are text, with no escapes (`{{` stays `{{`), except that a word in braces is
refused as a misspelt placeholder.
The default is the prompt the original AdPulse adapter was trained on. An adapter directory
written by `finetune` carries its template in `adpulse.json`, so `run --adapter DIR` uses the
template the adapter learned.
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
    """A prompt template: `text` with `{product}` and `{description}` placeholders."""

    text: str = DEFAULT_TEMPLATE_TEXT

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
        """The prompt for one row. Lines that held an empty field lose their trailing
        spaces, so a row without a description reads `Harem pants:` rather than `Harem pants: `."""
        values = {"product": product, "description": description}
        lines = []
        for line in self.text.split("\n"):
            if _PLACEHOLDER.search(line):
                line = _PLACEHOLDER.sub(lambda m: values[m.group(1)], line).rstrip()
            lines.append(line)
        return "\n".join(lines)


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
    """Token ids of `text` as both commands feed them to the model (no special tokens added)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt and its token ids; `truncated` when fields were cut to fit."""

    text: str
    ids: list[int]
    truncated: bool = False


def fit_prompt(template: Template, tokenizer, product: str, description: str, ids: list[int], max_tokens: int) -> Prompt:
    """Cut the description (then the product) of a prompt whose `ids` exceed `max_tokens`.

    The template itself is never cut: the model must still see `### Ad:` at the end.
    """
    text = template.render(product, description)
    while len(ids) > max_tokens:
        excess = len(ids) - max_tokens
        if description:
            description = _cut_tokens(tokenizer, description, excess)
        elif product:
            product = _cut_tokens(tokenizer, product, excess)
        else:
            raise SettingsError(
                f"--max-prompt-tokens {max_tokens} is less than the template alone needs ({len(ids)} tokens); raise it"
            )
        text = template.render(product, description)
        ids = encode(tokenizer, text)
    return Prompt(text, ids, truncated=True)


def _cut_tokens(tokenizer, text: str, excess: int) -> str:
    """`text` less at least `excess` tokens from its end, cut cleanly (no broken character)."""
    ids = encode(tokenizer, text)
    keep = max(0, len(ids) - excess - 1)  # one spare: re-tokenizing at the cut can merge tokens
    return tokenizer.decode(ids[:keep]).replace("\ufffd", "").rstrip()


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
    """The template an adapter was trained with, when its directory records one."""
    metadata = adapter_metadata(adapter_dir)
    if metadata is None or "template" not in metadata:
        return None
    return Template(metadata["template"])
