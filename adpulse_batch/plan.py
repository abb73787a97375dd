"""Turning a chunk of catalog rows into the prompts to generate.

Every row ends up in exactly one place: in the row list of one unique prompt, or among the
skipped rows with the reason. Identical prompts are generated once for all their rows.
Planning renders text only; prompts are tokenized (and cut to fit) when they are to be
generated or dealt out by size, so rows whose ads come from the cache cost no tokenizing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adpulse_batch.catalog import Chunk
from adpulse_batch.prompts import Prompt, PromptBuilder, Template, field_text

# The values of the status column.
OK = "ok"
TRUNCATED = "ok: input truncated"
FAILED_EMPTY = "failed: empty ad"  # the model wrote nothing usable, asked twice
SKIPPED = "skipped: {}"
SKIP_EMPTY = "no product name or description"


@dataclass
class PlannedPrompt:
    """A unique prompt of a chunk and the row ids that share it."""

    text: str  # the rendered prompt before any cut
    fields: tuple[str, str]  # its product and description: a prompt too long is cut field by field
    rows: list[int]
    prompt: Prompt | None = None  # set by encode_prompts


def status_of(truncated: bool, ads: list[str]) -> str:
    """The status of the rows of a generated prompt, from whether it was cut and its ads."""
    if not all(ads):
        return FAILED_EMPTY
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


def encode_prompts(builder: PromptBuilder, prompts: list[PlannedPrompt]) -> None:
    """Give each prompt not yet tokenized its token ids, cut to fit when too long."""
    todo = [p for p in prompts if p.prompt is None]
    if not todo:
        return
    texts = [p.text for p in todo] if not builder.template.chat else [builder.text(*p.fields) for p in todo]
    for planned, text, ids in zip(todo, texts, builder.encode_many(texts)):
        planned.prompt = Prompt(text, ids) if len(ids) <= builder.max_tokens else builder.build(*planned.fields, text=text)


def template_fits_untokenized(template: Template, max_prompt_tokens: int) -> bool:
    """True when the plain template alone surely fits `max_prompt_tokens`, known without a
    tokenizer: byte-level BPE and byte-fallback tokenizers never make more tokens than the
    text has bytes, plus their special tokens and a SentencePiece word-start mark (4 in all,
    to be safe). A chat rendering needs the tokenizer to be known at all."""
    return not template.chat and len(template.render("", "").encode("utf-8")) + 4 <= max_prompt_tokens
