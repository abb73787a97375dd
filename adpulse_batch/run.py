"""The `run` job: a catalog in, the same catalog with ad columns out.

Three stages: check everything that can be checked before loading a model (input, columns,
output, template); generate the ads chunk by chunk into part files in a work directory;
assemble the output from the input and the parts, by row id, into a file renamed into place.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from adpulse_batch import __version__
from adpulse_batch.catalog import (
    DESCRIPTION_NAMES,
    PRODUCT_NAMES,
    Catalog,
    CatalogWriter,
    catalog_format,
    check_writable,
    default_output_path,
    find_column,
    missing_column_error,
    open_catalog,
)
from adpulse_batch.errors import InputError, SettingsError
from adpulse_batch.model import ModelIdentity, base_model_name, load_model, load_template, load_tokenizer, resolve_device, resolve_dtype
from adpulse_batch.plan import OK, SKIPPED, TRUNCATED, Planner
from adpulse_batch.settings import NO_COLUMN, RunSettings
from adpulse_batch.shard import Parts, Results, assemble, share

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did; `line()` is the summary printed at the end, `report` the JSON."""

    input: str
    output: str
    rows_total: int = 0
    rows_generated: int = 0
    rows_skipped: int = 0
    rows_truncated: int = 0
    prompts_generated: int = 0  # unique prompts sent to the model (identical rows share one)
    new_tokens: int = 0
    seconds: float = 0.0
    model: dict = field(default_factory=dict)
    device: str = ""
    dtype: str = ""
    template: str = ""
    generation: dict = field(default_factory=dict)
    batch_size: int = 0
    max_prompt_tokens: int = 0
    version: str = __version__

    @property
    def rows_per_s(self) -> float:
        return self.rows_total / self.seconds if self.seconds else 0.0

    @property
    def new_tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.rows_total} rows read, {self.rows_generated} generated, {self.rows_skipped} skipped, "
            f"{self.rows_truncated} truncated in {self.seconds:.1f} s ({self.rows_per_s:.2f} rows/s, "
            f"{self.new_tokens_per_s:.1f} new tokens/s) -> {self.output}"
        )

    def report(self) -> dict:
        return {**asdict(self), "rows_per_s": self.rows_per_s, "new_tokens_per_s": self.new_tokens_per_s}


@dataclass
class Job:
    """A run whose invocation has been checked: every path and column is known."""

    settings: RunSettings
    catalog: Catalog
    output: Path
    product_column: str
    description_column: str | None


def prepare(settings: RunSettings) -> Job:
    """Check the input, columns and output before any model is loaded."""
    output = settings.output or default_output_path(settings.input)
    output_format = catalog_format(output, role="output")
    if output.resolve() == settings.input.resolve():
        raise SettingsError(f"output {output} is the input file; name another with -o/--output")
    catalog = open_catalog(settings.input, encoding=settings.encoding, limit=settings.limit)
    product = find_column(catalog.columns, settings.product_column, PRODUCT_NAMES, role="product", flag="--product-column")
    if product is None:
        raise missing_column_error(catalog.columns, role="product", flag="--product-column", candidates=PRODUCT_NAMES)
    if settings.description_column is not None and settings.description_column.lower() == NO_COLUMN:
        description = None
    else:
        description = find_column(
            catalog.columns, settings.description_column, DESCRIPTION_NAMES, role="description", flag="--description-column"
        )
        if description is None:
            raise missing_column_error(
                catalog.columns, role="description", flag="--description-column", candidates=DESCRIPTION_NAMES,
                extra=", or pass --description-column none to write ads from the product alone",
            )
    check_writable(catalog, output_format)
    for name in [*settings.ad_columns, settings.status_column]:
        if name in catalog.columns:
            flag = "--status-column" if name == settings.status_column else "--ad-column"
            raise InputError(f"the input already has a column named {name!r}; choose another name with {flag}")
    return Job(settings, catalog, output, product, description)


def run_catalog(settings: RunSettings, *, progress: bool = False) -> RunSummary:
    """Run the whole job; returns the summary (and writes the report when asked)."""
    started = time.monotonic()
    job = prepare(settings)
    template = load_template(settings.model, settings.template)
    tokenizer = load_tokenizer(settings.model)
    planner = Planner(template, tokenizer, job.product_column, job.description_column, settings.max_prompt_tokens)
    planner.check()
    device = resolve_device(settings.model.device)
    summary = RunSummary(
        input=str(settings.input),
        output=str(job.output),
        rows_total=job.catalog.num_rows,
        device=str(device),
        dtype=str(resolve_dtype(settings.model.dtype, device)).removeprefix("torch."),
        template=template.text,
        generation=asdict(settings.generation),
        batch_size=settings.batch_size,
        max_prompt_tokens=settings.max_prompt_tokens,
    )
    work_dir = job.output.with_name(f".{job.output.name}.adpulse-work")
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        parts = Parts(work_dir, settings.generation.num_variants)
        bar = tqdm(total=job.catalog.num_rows, unit="rows", file=sys.stderr, disable=not progress, dynamic_ncols=True)
        # Log lines (model loading) print above the bar instead of through it.
        with bar, logging_redirect_tqdm():
            identity, summary.prompts_generated = _generate(job, planner, parts, bar, device)
        summary.model = (identity or _identity_without_loading(settings)).as_dict()
        with CatalogWriter(job.output, job.catalog, [*settings.ad_columns, settings.status_column]) as writer:
            counts = assemble(job.catalog, parts, writer, settings.ad_columns, settings.status_column)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    for name, value in counts.items():
        setattr(summary, name, value)
    summary.seconds = time.monotonic() - started
    if settings.report is not None:
        settings.report.parent.mkdir(parents=True, exist_ok=True)
        settings.report.write_text(json.dumps(summary.report(), indent=2) + "\n", encoding="utf-8")
    return summary


def _generate(job: Job, planner: Planner, parts: Parts, bar: tqdm, device) -> tuple[ModelIdentity | None, int]:
    """Generate every row's ads into part files; the model is loaded at the first prompt.
    Returns the model's identity (None when no row needed it) and the prompts generated."""
    settings = job.settings
    generator = None
    prompts_generated = 0
    for chunk in job.catalog.chunks():
        plan = planner.plan(chunk)
        prompts, skipped = share(plan, rank=0, world=1)
        results = Results()
        for row, reason in skipped.items():
            results.add(row, SKIPPED.format(reason), 0, [""] * settings.generation.num_variants)
        bar.update(len(skipped))
        if prompts:
            if generator is None:
                generator = _load_generator(settings, planner, device)
            generations = generator.generate(
                [p.prompt for p in prompts],
                batch_size=settings.batch_size,
                on_batch=lambda finished: bar.update(sum(len(prompts[i].rows) for i in finished)),
            )
            prompts_generated += len(prompts)
            for planned, variants in zip(prompts, generations):
                status = TRUNCATED if planned.prompt.truncated else OK
                ads = [g.text for g in variants]
                for n, row in enumerate(planned.rows):
                    # Rows sharing a prompt share one generation: its tokens count once.
                    results.add(row, status, sum(g.new_tokens for g in variants) if n == 0 else 0, ads)
        if results.rows:
            parts.write(chunk.start, results, tag="w0")
    return (generator.identity if generator is not None else None), prompts_generated


def _load_generator(settings: RunSettings, planner: Planner, device):
    from adpulse_batch.generate import Generator

    loaded = load_model(settings.model, device=device, tokenizer=planner.tokenizer)
    return Generator(loaded, planner.template, settings.generation)


def _identity_without_loading(settings: RunSettings) -> ModelIdentity:
    return ModelIdentity(base_model_name(settings.model), None, settings.model.adapter, None)
