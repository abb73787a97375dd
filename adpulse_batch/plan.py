"""Turning a chunk of catalog rows into the prompts to generate.

Every row ends up in exactly one place: in the row list of one unique prompt, or among the
skipped rows with the reason. Identical prompts are generated once for all their rows.
Planning renders text only; prompts are tokenized (and cut to fit) when they are to be
generated or dealt out by size, so rows whose ads come from the cache cost no tokenizing.
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

    text: str  # the rendered prompt before any cut
    fields: tuple[str, str]  # its product and description: a prompt too long is cut field by field
    rows: list[int]
    prompt: Prompt | None = None  # set by PromptEncoder.encode


def status_of(truncated: bool) -> str:
    """The status of the rows of a generated prompt."""
    return TRUNCATED if truncated else OK


@dataclass
class ChunkPlan:
    start: int
    num_rows: int
    prompts: list[PlannedPrompt] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # row id -> reason


@dataclass(frozen=True)
class Planner:
    """Renders the rows of each chunk with one template."""

    template: Template
    product_column: str
    description_column: str | None

    def plan(self, chunk: Chunk) -> ChunkPlan:
        plan = ChunkPlan(chunk.start, chunk.num_rows)
        products = chunk.values(self.product_column)
        descriptions = chunk.values(self.description_column)
        # By fields, not rendered text: "A: B" + "C" and "A" + "B: C" render alike but are cut
        # differently when too long.
        planned: dict[tuple[str, str], PlannedPrompt] = {}
        for offset, (product, description) in enumerate(zip(products, descriptions)):
            row = chunk.start + offset
            if offset in chunk.problems:
                plan.skipped[row] = chunk.problems[offset]
                continue
            product, description = field_text(product), field_text(description)
            if not product and not description:
                plan.skipped[row] = SKIP_EMPTY
                continue
            fields = (product, description)
            if fields not in planned:
                planned[fields] = PlannedPrompt(self.template.render(product, description), fields, [])
            planned[fields].rows.append(row)
        plan.prompts = list(planned.values())
        return plan


@dataclass(frozen=True)
class PromptEncoder:
    """Tokenizes planned prompts, cutting the fields of those over --max-prompt-tokens."""

    template: Template
    tokenizer: object
    max_prompt_tokens: int

    def encode(self, prompts: list[PlannedPrompt]) -> None:
        """Give each prompt not yet tokenized its token ids."""
        todo = [p for p in prompts if p.prompt is None]
        encoded = self.tokenizer([p.text for p in todo], add_special_tokens=False)["input_ids"] if todo else []
        for planned, ids in zip(todo, encoded):
            if len(ids) > self.max_prompt_tokens:
                planned.prompt = fit_prompt(self.template, self.tokenizer, *planned.fields, ids, self.max_prompt_tokens)
            else:
                planned.prompt = Prompt(planned.text, ids)

    def check(self) -> None:
        """Fail when the template alone does not fit --max-prompt-tokens."""
        ids = encode(self.tokenizer, self.template.render("", ""))
        if len(ids) > self.max_prompt_tokens:
            fit_prompt(self.template, self.tokenizer, "", "", ids, self.max_prompt_tokens)  # raises, naming the flag


def template_fits_untokenized(template: Template, max_prompt_tokens: int) -> bool:
    """True when the template alone surely fits `max_prompt_tokens`, known without a
    tokenizer: BLOOM's byte-level BPE never makes more tokens than the text has bytes."""
    return len(template.render("", "").encode("utf-8")) <= max_prompt_tokens
