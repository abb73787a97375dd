"""Ads for pandas DataFrames: for notebooks, and for the batch UDFs of Spark and Ray.

`AdWriter` loads the model once and then writes ads for one DataFrame after another, the
way a class-based UDF is used:

    writer = AdWriter(ModelSettings(adapter="adapters/mine"))
    df = writer(df)                                    # a pandas DataFrame, in a notebook
    table = writer.add_to_arrow(table)                 # an Arrow table: what spark.py and ray.py hand it

It plans and generates exactly as `run` does (same template, prompts, truncation, dedupe,
statuses and greedy ads); the nightly-job machinery (files, cache, resume) stays in `run`.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from adpulse_batch.banned import BannedWords
from adpulse_batch.catalog import Chunk, find_prompt_columns
from adpulse_batch.engines import engine_class
from adpulse_batch.errors import InputError
from adpulse_batch.flags import AdFlagger, FlagRules
from adpulse_batch.model import check_fits, check_model, load_template, load_tokenizer, resolve_device
from adpulse_batch.plan import SKIPPED, Planner, encode_prompts, status_of
from adpulse_batch.prompts import PromptBuilder
from adpulse_batch.settings import GenerationSettings, ModelSettings, ad_column_names


class AdWriter:
    """Writes the ad columns for DataFrames; the model is loaded at the first row to generate."""

    def __init__(
        self,
        model: ModelSettings | None = None,
        generation: GenerationSettings | None = None,
        *,
        product_column: str | None = None,
        description_column: str | None = None,
        ad_column: str = "ad_copy",
        status_column: str = "ad_status",
        flags_column: str | None = "ad_flags",
        batch_size: int | None = None,
        max_prompt_tokens: int = 256,
        chat: bool | None = None,
    ):
        self.model = model or ModelSettings()
        self.generation = generation or GenerationSettings()
        self.product_column, self.description_column = product_column, description_column
        self.status_column = status_column
        self.ad_columns = ad_column_names(ad_column, self.generation.num_variants)
        self.flags_columns = ad_column_names(flags_column, self.generation.num_variants) if flags_column is not None else []
        channel = self.generation.target_channel
        self.rules = FlagRules(BannedWords(self.generation.banned_words), forbid_emoji=channel is not None and not channel.allows_emoji)
        self.template = load_template(self.model, None, chat)
        check_model(self.model)
        slots = max_prompt_tokens + self.generation.max_new_tokens
        self.batch_size = batch_size or engine_class(self.model.engine).default_batch_size(self.model, slots=slots)
        check_fits(self.model, max_prompt_tokens=max_prompt_tokens, max_new_tokens=self.generation.max_new_tokens)
        self.builder = PromptBuilder(self.template, load_tokenizer(self.model), max_prompt_tokens)
        self.builder.check()
        self._generator = None

    @property
    def new_columns(self) -> list[str]:
        """The columns the writer appends, in order."""
        return [*self.ad_columns, self.status_column, *self.flags_columns]

    def check_columns(self, columns: list[str]) -> tuple[str, str | None]:
        """The product and description columns among `columns`; an InputError when there is
        no product column or a new column's name is taken. Spark and Ray call it on the
        driver, before any worker loads a model."""
        for name in self.new_columns:
            if name in columns:
                raise InputError(
                    f"the DataFrame already has a column named {name!r}; choose another ad_column, status_column or flags_column"
                )
        return find_prompt_columns(columns, self.product_column, self.description_column, flags=("product_column", "description_column"))

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame` with the ad, status and flags columns added (a new DataFrame; same index and rows)."""
        columns = [str(c) for c in frame.columns]
        by_name = dict(zip(columns, frame.columns))
        new = self._ad_values(columns, lambda name: frame[by_name[name]].tolist(), lambda: frame.to_dict("records"), len(frame))
        return frame.assign(**{name: pd.Series(values, index=frame.index) for name, values in new.items()})

    def add_to_arrow(self, table: pa.Table) -> pa.Table:
        """`table` with the ad, status and flags columns appended as strings. Its own columns
        are passed on as they are, never converted, and its rows reach the prompts and flags
        as Python values, as `run` reads a Parquet catalog."""
        new = self._ad_values(table.column_names, lambda name: table.column(name).to_pylist(), table.to_pylist, table.num_rows)
        for name, values in new.items():
            table = table.append_column(name, pa.array(values, pa.string()))
        return table

    def _ad_values(self, columns: list[str], cells_of, records, num_rows: int) -> dict[str, list[str]]:
        """The new columns' values for `num_rows` rows: `cells_of(column)` gives one column's
        values, `records()` every row as a dict (for the flags)."""
        product, description = self.check_columns(columns)
        cells = {name: cells_of(name) for name in (product, description) if name is not None}
        chunk = Chunk(0, records=[dict(zip(cells, row)) for row in zip(*cells.values())])
        plan = Planner(self.template, product, description).plan(chunk)
        encode_prompts(self.builder, plan.prompts)

        ads = [[""] * len(self.ad_columns) for _ in range(num_rows)]
        fits = [[""] * len(self.ad_columns) for _ in range(num_rows)]
        status = [""] * num_rows
        for row, reason in plan.skipped.items():
            status[row] = SKIPPED.format(reason)
        if plan.prompts:
            generations = self._generator_for().generate([p.prompt for p in plan.prompts], batch_size=self.batch_size)
            for planned, variants in zip(plan.prompts, generations):
                for row in planned.rows:
                    ads[row] = [g.text for g in variants]
                    fits[row] = [",".join(g.flags) for g in variants]
                    status[row] = status_of(planned.prompt.truncated, [g.text for g in variants])
        new = {name: [a[k] for a in ads] for k, name in enumerate(self.ad_columns)}
        new[self.status_column] = status
        if self.flags_columns:
            new.update(zip(self.flags_columns, self._flags(records(), plan, ads, fits)))
        return new

    def _flags(self, records: list[dict], plan, ads: list[list[str]], fits: list[list[str]]) -> list[list[str]]:
        """Each variant's flags column, every cell of the row checked. `duplicate` is left
        out: it compares the ads of a whole run, and a batch function sees one batch (so a
        row's flags do not depend on how the rows were cut into batches)."""
        flagger = AdFlagger(self.rules, len(self.ad_columns), duplicates=False)
        return [
            [flagger.flags(row, k, records[row], ads[row][k], fits[row][k]) if row not in plan.skipped else "" for row in range(len(records))]
            for k in range(len(self.ad_columns))
        ]

    def _generator_for(self):
        if self._generator is None:
            from adpulse_batch.generate import load_generator

            self._generator = load_generator(self.model, self.builder, self.generation, device=resolve_device(self.model.device))
        return self._generator
