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
from adpulse_batch.shard import Results, WorkDir, Workers, assemble, current_workers, share

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
    workers: list[dict] = field(default_factory=list)  # per worker: rows, prompts, new tokens, seconds
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
    """A run whose invocation has been checked: paths, columns, template and tokenizer."""

    settings: RunSettings
    catalog: Catalog
    output: Path
    planner: Planner


def prepare(settings: RunSettings) -> Job:
    """Check everything that can be checked before a model is loaded: input, columns,
    output, template, tokenizer (which also finds the model and adapter)."""
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
    template = load_template(settings.model, settings.template)
    tokenizer = load_tokenizer(settings.model)
    planner = Planner(template, tokenizer, product, description, settings.max_prompt_tokens)
    planner.check()
    return Job(settings, catalog, output, planner)


def work_dir_for(output: Path) -> Path:
    """The work directory of a run: hidden, beside the output (same file system, so parts
    can be renamed into place and multi-machine runs share it with the output)."""
    return output.with_name(f".{output.name}.adpulse-work")


def run_catalog(settings: RunSettings, *, progress: bool = False) -> RunSummary | None:
    """Run the job; returns the summary (and writes the report when asked).

    Launched as several worker processes (`accelerate launch`), each process generates its
    share of the rows and the main one assembles the output once all are done; the others
    return None.
    """
    started = time.monotonic()
    job = prepare(settings)
    workers = current_workers(cpu=resolve_device(settings.model.device).type == "cpu")
    device = resolve_device(settings.model.device, index=workers.local_rank if workers.world > 1 else None)
    work = WorkDir(work_dir_for(job.output), settings.generation.num_variants)
    if workers.is_main:
        shutil.rmtree(work.path, ignore_errors=True)
        work.path.mkdir(parents=True)
    workers.barrier()  # nobody writes parts before the work directory is ready

    # One progress bar, in the main process, counting every worker's rows. Log lines
    # (model loading) print above it instead of through it.
    bar = tqdm(total=job.catalog.num_rows, unit="rows", file=sys.stderr, disable=not (progress and workers.is_main), dynamic_ncols=True)
    with bar, logging_redirect_tqdm():
        worker = Worker(job, work, workers, device, bar)
        try:
            worker.run()
        except BaseException as error:
            work.mark_failed(workers.rank, error)
            raise
        work.mark_done(workers.rank, worker.stats(started))
        if not workers.is_main:
            return None
        stats = work.wait_for(workers, on_wait=worker.show_progress)
        worker.show_progress(force=True)

    with CatalogWriter(job.output, job.catalog, [*settings.ad_columns, settings.status_column]) as writer:
        counts = assemble(job.catalog, work, writer, settings.ad_columns, settings.status_column)
    shutil.rmtree(work.path, ignore_errors=True)
    summary = RunSummary(
        input=str(settings.input),
        output=str(job.output),
        rows_total=job.catalog.num_rows,
        prompts_generated=sum(s["prompts"] for s in stats),
        seconds=time.monotonic() - started,
        model=next((s["model"] for s in stats if s["model"]), _identity_without_loading(settings).as_dict()),
        device=str(device) if workers.world == 1 else f"{workers.world} workers",
        dtype=str(resolve_dtype(settings.model.dtype, resolve_device(settings.model.device))).removeprefix("torch."),
        template=job.planner.template.text,
        generation=asdict(settings.generation),
        batch_size=settings.batch_size,
        max_prompt_tokens=settings.max_prompt_tokens,
        workers=stats,
        **counts,
    )
    if settings.report is not None:
        settings.report.parent.mkdir(parents=True, exist_ok=True)
        settings.report.write_text(json.dumps(summary.report(), indent=2) + "\n", encoding="utf-8")
    return summary


class Worker:
    """One process's share of a run: plans every chunk, generates the prompts dealt to it,
    commits the results as part files. The model is loaded at the first prompt, so a share
    with nothing to generate costs no model load."""

    def __init__(self, job: Job, work: WorkDir, workers: Workers, device, bar: tqdm):
        self.job, self.planner, self.work, self.workers, self.device, self.bar = job, job.planner, work, workers, device, bar
        self.generator = None
        self.rows = 0  # rows of this worker's share done
        self.prompts = 0
        self.new_tokens = 0
        self._shown = 0.0

    def run(self) -> None:
        settings = self.job.settings
        variants = settings.generation.num_variants
        for chunk in self.job.catalog.chunks():
            prompts, skipped = share(self.planner.plan(chunk), self.workers, new_tokens=settings.generation.max_new_tokens)
            results = Results()
            for row, reason in skipped.items():
                results.add(row, SKIPPED.format(reason), 0, [""] * variants)
            self._advance(len(skipped))
            if prompts:
                generations = self._generator().generate(
                    [p.prompt for p in prompts],
                    batch_size=settings.batch_size,
                    on_batch=lambda finished: self._advance(sum(len(prompts[i].rows) for i in finished)),
                )
                self.prompts += len(prompts)
                for planned, ads in zip(prompts, generations):
                    status = TRUNCATED if planned.prompt.truncated else OK
                    tokens = sum(g.new_tokens for g in ads)
                    self.new_tokens += tokens
                    for n, row in enumerate(planned.rows):
                        # Rows sharing a prompt share one generation: its tokens count once.
                        results.add(row, status, tokens if n == 0 else 0, [g.text for g in ads])
            if results.rows:
                self.work.write(chunk.start, results, rank=self.workers.rank)

    def stats(self, started: float) -> dict:
        """What this worker did, for the main process's report."""
        identity = self.generator.identity.as_dict() if self.generator is not None else None
        return {
            "rank": self.workers.rank,
            "device": str(self.device),
            "rows": self.rows,
            "prompts": self.prompts,
            "new_tokens": self.new_tokens,
            "seconds": round(time.monotonic() - started, 3),
            "model": identity,
        }

    def show_progress(self, force: bool = False) -> None:
        """Move the bar to this worker's rows plus the rows other workers have committed."""
        if self.bar.disable or not (force or time.monotonic() - self._shown > 1.0):
            return
        others = self.work.committed_rows(other_than=self.workers.rank) if self.workers.world > 1 else 0
        self.bar.n = self.rows + others
        self.bar.refresh()
        self._shown = time.monotonic()

    def _advance(self, rows: int) -> None:
        self.rows += rows
        self.show_progress()

    def _generator(self):
        if self.generator is None:
            from adpulse_batch.generate import Generator

            settings = self.job.settings
            loaded = load_model(settings.model, device=self.device, tokenizer=self.planner.tokenizer)
            self.generator = Generator(loaded, self.planner.template, settings.generation)
        return self.generator


def _identity_without_loading(settings: RunSettings) -> ModelIdentity:
    return ModelIdentity(base_model_name(settings.model), None, settings.model.adapter, None)
