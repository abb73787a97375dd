"""Turning a chunk of catalog rows into the prompts to generate.

Every row ends up in exactly one place: in the row list of one unique prompt, or among the
skipped rows with the reason. Identical prompts are generated once for all their rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adpulse_batch.catalog import Chunk
from adpulse_batch.prompts import Prompt, Template, encode, field_text, fit_prompt

# The values of the status column.
OK = "ok"
TRUNCATED = "ok: input truncated"
SKIPPED = "skipped: {}"
SKIP_EMPTY = "no product name or description"


@dataclass
class PlannedPrompt:
    """A unique prompt of a chunk and the row ids that share it."""

    prompt: Prompt
    rows: list[int]


def status_of(planned: PlannedPrompt) -> str:
    """The status of the rows of a generated prompt."""
    return TRUNCATED if planned.prompt.truncated else OK


@dataclass
class ChunkPlan:
    start: int
    num_rows: int
    prompts: list[PlannedPrompt] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # row id -> reason


@dataclass(frozen=True)
class Planner:
    """Renders and tokenizes the rows of each chunk with one template and tokenizer."""

    template: Template
    tokenizer: object
    product_column: str
    description_column: str | None
    max_prompt_tokens: int

    def plan(self, chunk: Chunk) -> ChunkPlan:
        plan = ChunkPlan(chunk.start, chunk.num_rows)
        products = chunk.values(self.product_column)
        descriptions = chunk.values(self.description_column)
        fields: dict[str, tuple[str, str]] = {}  # prompt text -> its fields
        rows: dict[str, list[int]] = {}
        for offset, (product, description) in enumerate(zip(products, descriptions)):
            row = chunk.start + offset
            if offset in chunk.problems:
                plan.skipped[row] = chunk.problems[offset]
                continue
            product, description = field_text(product), field_text(description)
            if not product and not description:
                plan.skipped[row] = SKIP_EMPTY
                continue
            text = self.template.render(product, description)
            fields.setdefault(text, (product, description))
            rows.setdefault(text, []).append(row)
        texts = list(rows)
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        for text, ids in zip(texts, encoded):
            if len(ids) > self.max_prompt_tokens:
                prompt = fit_prompt(self.template, self.tokenizer, *fields[text], ids, self.max_prompt_tokens)
            else:
                prompt = Prompt(text, ids)
            plan.prompts.append(PlannedPrompt(prompt, rows[text]))
        return plan

    def check(self) -> None:
        """Fail before any work when the template alone does not fit --max-prompt-tokens."""
        ids = encode(self.tokenizer, self.template.render("", ""))
        if len(ids) > self.max_prompt_tokens:
            fit_prompt(self.template, self.tokenizer, "", "", ids, self.max_prompt_tokens)  # raises, naming the flag
