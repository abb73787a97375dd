"""The `run` job: a catalog in, the same catalog with ad columns out.

Three stages: check everything that can be checked before loading a model (input, columns,
output, template, tokenizer); generate the ads chunk by chunk into part files in a work
directory (worker.py); assemble the output from the input and the parts, by row id, into a
file renamed into place (workdir.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from adpulse_batch import __version__
from adpulse_batch.banned import BannedWords
from adpulse_batch.cache import AdCache, default_cache_path, file_digest, key_context
from adpulse_batch.catalog import (
    Catalog,
    CatalogWriter,
    catalog_format,
    catalog_prompt_columns,
    check_writable,
    check_writable_path,
    default_output_path,
    open_catalog,
)
from adpulse_batch.engines import engine_class
from adpulse_batch.errors import InputError, SettingsError, writing
from adpulse_batch.flags import FlagRules
from adpulse_batch.html_report import ReportCollector, write_html_report
from adpulse_batch.lock import OutputLock
from adpulse_batch.model import check_fits, check_model, load_template, load_tokenizer, model_identity, resolve_device
from adpulse_batch.plan import Planner, template_fits_untokenized
from adpulse_batch.prompts import PromptBuilder
from adpulse_batch.settings import RunSettings
from adpulse_batch.shard import current_workers
from adpulse_batch.storage import ObjectPath, local_output_path
from adpulse_batch.workdir import Layout, WorkDir, assemble
from adpulse_batch.worker import Worker


@dataclass
class RunSummary:
    """What a run did; `line()` is the summary printed at the end, `report` the JSON."""

    input: str
    output: str
    rows_total: int = 0
    rows_generated: int = 0  # ads written by the model this run
    rows_from_cache: int = 0  # ads found in the cache
    rows_resumed: int = 0  # ads an interrupted run had committed
    rows_skipped: int = 0
    rows_truncated: int = 0
    prompts_generated: int = 0  # unique prompts sent to the model (identical rows share one)
    new_tokens: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0  # starting the engine (the slowest worker's), model loading included
    generate_seconds: float = 0.0  # generating (the slowest worker's), engine start excluded
    model: dict = field(default_factory=dict)
    engine: dict = field(default_factory=dict)  # name, version, device type, dtype, library versions
    model_loaded: bool = False
    device: str = ""
    dtype: str = ""
    template: str = ""
    chat: bool = False  # prompts rendered through the tokenizer's chat template
    generation: dict = field(default_factory=dict)
    batch_size: int = 0
    max_prompt_tokens: int = 0
    cache: str | None = None
    work_dir: str = ""
    workers: list[dict] = field(default_factory=list)  # per worker: rows, prompts, new tokens, seconds
    quality: dict = field(default_factory=dict)  # ads per status and per flag, their lengths (the HTML report's counts)
    version: str = __version__

    @property
    def rows_per_s(self) -> float:
        return self.rows_total / self.seconds if self.seconds else 0.0

    @property
    def new_tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.rows_total} rows read, {self.rows_generated} generated, {self.rows_from_cache} from cache, "
            f"{self.rows_resumed} resumed, {self.rows_skipped} skipped, {self.rows_truncated} truncated "
            f"in {self.seconds:.1f} s ({self.rows_per_s:.2f} rows/s, {self.new_tokens_per_s:.1f} new tokens/s) -> {self.output}"
        )

    def counts(self) -> dict:
        """The numbers of the summary line (for JSON logs)."""
        names = ["rows_total", "rows_generated", "rows_from_cache", "rows_resumed", "rows_skipped", "rows_truncated", "new_tokens"]
        return {**{n: getattr(self, n) for n in names}, "seconds": round(self.seconds, 3), "output": self.output}

    def report(self) -> dict:
        return {**asdict(self), "rows_per_s": self.rows_per_s, "new_tokens_per_s": self.new_tokens_per_s}


@dataclass
class Job:
    """A run whose invocation has been checked: paths, columns, template, model."""

    settings: RunSettings
    catalog: Catalog
    output: Path
    planner: Planner
    batch_size: int  # --batch-size, else the engine's


def prepare(settings: RunSettings) -> Job:
    """Check everything that can be checked before a model is loaded: input, columns,
    output, template, that the model and adapter exist and are of kinds run can use."""
    if isinstance(settings.input, ObjectPath) and not settings.input.exists():  # before the output beside it
        raise InputError(f"input {settings.input} does not exist")
    output = settings.output or default_output_path(settings.input)
    output_format = catalog_format(output, role="output")
    if isinstance(output, ObjectPath) and settings.work_dir is None and _machines() > 1:
        raise SettingsError(
            f"-o/--output {output} on several machines: their parts would stay on each machine's disk; "
            "name a --work-dir that every machine mounts"
        )
    if output.resolve() == settings.input.resolve():
        raise SettingsError(f"output {output} is the input file; name another with -o/--output")
    for path, flag in ((output, "-o/--output"), (settings.report, "--report"), (settings.html_report, "--html-report")):
        check_writable_path(path, flag=flag)  # now, not after the work
    catalog = open_catalog(settings.input, encoding=settings.encoding, limit=settings.limit)
    product, description = catalog_prompt_columns(catalog, settings.product_column, settings.description_column)
    check_writable(catalog, output_format)
    for name in settings.new_columns:
        if name in catalog.columns:
            flag = "--status-column" if name == settings.status_column else "--flags-column" if name in settings.flags_columns else "--ad-column"
            raise InputError(f"the input already has a column named {name!r}; choose another name with {flag}")
    template = load_template(settings.model, settings.template, settings.chat)
    check_model(settings.model)
    check_fits(settings.model, max_prompt_tokens=settings.max_prompt_tokens, max_new_tokens=settings.generation.max_new_tokens)
    # The tokenizer (and transformers with it) loads when a prompt is first tokenized: a run
    # whose ads all come from the cache never needs it.
    if not template_fits_untokenized(template, settings.max_prompt_tokens):
        PromptBuilder(template, load_tokenizer(settings.model), settings.max_prompt_tokens).check()
    slots = settings.max_prompt_tokens + settings.generation.max_new_tokens
    batch_size = settings.batch_size or engine_class(settings.model.engine).default_batch_size(settings.model, slots=slots)
    return Job(settings, catalog, output, Planner(template, product, description), batch_size)


def _machines() -> int:
    """More than 1 when torchrun has started workers on several machines."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return 1 if world <= 1 else -(-world // int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def work_dir_for(settings: RunSettings, output: Path) -> Path:
    """`--work-dir`, else a hidden directory beside the output (same file system, so parts are
    renamed into place, and shared by the machines of a multi-machine run); for an object
    output, beside the local file that is uploaded as it."""
    return settings.work_dir or local_output_path(output).with_name(f".{output.name}.adpulse-work")


def run_catalog(settings: RunSettings, *, progress: bool = False) -> RunSummary | None:
    """Run the job; returns the summary (and writes the report when asked).

    Results are committed to a work directory as they come; run again after a crash, the
    same job resumes there. Launched as several worker processes (`accelerate launch`),
    each generates its share and the main one assembles the output once all are done; the
    others return None.
    """
    started = time.monotonic()
    job = prepare(settings)
    workers = current_workers(cpu=resolve_device(settings.model.device).type == "cpu")
    device = resolve_device(settings.model.device, index=workers.local_rank if workers.world > 1 else None)
    engine = engine_class(settings.model.engine).identity(settings.model, device)
    cache = AdCache(settings.cache or default_cache_path()) if settings.use_cache else None
    identity = model_identity(settings.model, digest=cache.file_digest if cache is not None else file_digest)
    context = key_context(
        identity.as_dict(), engine, asdict(settings.generation),
        max_prompt_tokens=settings.max_prompt_tokens, chat=job.planner.template.chat,
    )  # fmt: skip
    work = WorkDir(work_dir_for(settings, job.output), settings.generation.num_variants)
    lock = OutputLock(job.output)
    if workers.is_main:
        lock.acquire()  # before touching the work directory, which a running job may own
    try:
        resumed = work.open(_fingerprint(job, context), job.output) if workers.is_main else 0
        workers.barrier()  # nobody reads or writes parts before the work directory is ready
        # One progress bar, in the main process, counting every worker's rows. Log lines
        # (model loading) print above it instead of through it.
        bar = tqdm(
            total=job.catalog.num_rows, initial=min(resumed, job.catalog.num_rows), unit="rows", file=sys.stderr,
            disable=not (progress and workers.is_main), dynamic_ncols=True,
        )  # fmt: skip
        with bar, logging_redirect_tqdm():
            worker = Worker(job, work, workers, device, bar, cache=cache, key_context=context)
            try:
                worker.run()
            except BaseException as error:
                work.mark_failed(workers.rank, error)
                raise
            work.mark_done(workers.rank, worker.stats(started))
            if not workers.is_main:
                return None
            stats = work.wait_for(workers.world, on_wait=worker.show_progress)
            worker.show_progress(force=True)
        channel = settings.generation.target_channel
        rules = FlagRules(BannedWords(settings.generation.banned_words), forbid_emoji=channel is not None and not channel.allows_emoji)
        collector = ReportCollector(channel)
        layout = Layout(
            settings.ad_columns, settings.status_column, settings.flags_columns, job.planner.product_column, job.planner.description_column
        )
        with CatalogWriter(job.output, job.catalog, settings.new_columns) as writer:
            counts = assemble(job.catalog, work, writer, layout, csv_safe_ads=settings.csv_safe, rules=rules, collector=collector)
        if not settings.keep_work:
            work.remove()
    finally:
        lock.release()
        if cache is not None:
            cache.close()
    summary = RunSummary(
        input=str(settings.input),
        output=str(job.output),
        rows_total=job.catalog.num_rows,
        prompts_generated=sum(s["prompts"] for s in stats),
        load_seconds=max(s["load_seconds"] for s in stats),
        generate_seconds=max(s["generate_seconds"] for s in stats),
        seconds=time.monotonic() - started,
        model=identity.as_dict(),
        engine=engine,
        model_loaded=any(s["model_loaded"] for s in stats),
        device=str(device) if workers.world == 1 else f"{workers.world} workers",
        dtype=engine.get("dtype", ""),
        template=job.planner.template.text,
        chat=job.planner.template.chat,
        generation=asdict(settings.generation),
        batch_size=job.batch_size,
        max_prompt_tokens=settings.max_prompt_tokens,
        cache=str(cache.path) if cache is not None else None,
        work_dir=str(work.path),
        workers=stats,
        quality=collector.counts(),
        **counts,
    )
    if settings.report is not None:
        _write_report(settings.report, summary.report())
    if settings.html_report is not None:
        with writing(settings.html_report, "check that its directory is writable and has free space, or name another page with --html-report"):
            write_html_report(settings.html_report, summary.report(), collector)
    return summary


def _write_report(path: Path, report: dict) -> None:
    """Written beside and renamed into place, as the output is: no reader sees half of it."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path, "check that its directory is writable and has free space, or name another report with --report"):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            os.replace(temp, path)
        except OSError:
            temp.unlink(missing_ok=True)
            raise


def _fingerprint(job: Job, context: str) -> str:
    """What the work directory's results depend on: work of another fingerprint is dropped."""
    settings = job.settings
    described = {
        "input": job.catalog.content_digest(),
        "context": context,
        "template": job.planner.template.text,
        "columns": [job.planner.product_column, job.planner.description_column],
        "max_prompt_tokens": settings.max_prompt_tokens,
        "encoding": settings.encoding,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
