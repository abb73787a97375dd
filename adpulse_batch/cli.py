"""The `adpulse-batch` command line: parses and checks flags, calls the library, and turns
its errors into one line on stderr with an exit code. No torch import here: --help is instant."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

import click

from adpulse_batch import __version__
from adpulse_batch.channels import CHANNELS
from adpulse_batch.engines import ENGINES
from adpulse_batch.errors import AdPulseError, Terminated
from adpulse_batch.families import FAMILIES
from adpulse_batch.settings import DEFAULT_ADAPTER, DEFAULT_BASE_MODEL, DEVICES, DTYPES, QUANTIZE, VLLM_LORA
from adpulse_batch.storage import is_uri

log = logging.getLogger("adpulse_batch")


class AdPulseGroup(click.Group):
    """A group whose errors, usage errors included, are one line on stderr."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        extra["obj"] = {"args": args}  # `run --num-processes` relaunches the same command line
        global _log_format
        _log_format = (_log_format_in(args) if args[:1] == ["run"] else None) or "text"  # only run has --log-format
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as error:
            where = f" (see '{error.ctx.command_path} --help')" if getattr(error, "ctx", None) else ""
            _fail(f"{error.format_message()}{where}", error.exit_code)
        except AdPulseError as error:
            _fail(str(error), error.exit_code)
        except click.exceptions.Abort:
            _fail("interrupted; no output was written", 130)
        finally:
            signal.signal(signal.SIGTERM, previous)  # a test or notebook gets its own back
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        # Here rather than through Click, which answers Ctrl-C with a blank line (not JSON).
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as stop:
            _fail(f"interrupted{' (SIGTERM)' if isinstance(stop, Terminated) else ''}; no output was written",
                  getattr(stop, "exit_code", 130))  # fmt: skip


def _terminate(signum, frame):
    """SIGTERM stops a command as Ctrl-C does. A second one while it cleans up is ignored
    (SIGKILL still ends it at once)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


_log_format = "text"  # set by --log-format: errors follow it too


def _log_format_in(args: list[str]) -> str | None:
    """--log-format as the command line (else its environment variable) gives it, read before
    Click parses anything, so that an error in parsing (a bad flag, a bad job file) follows it."""
    for before, arg in zip([None, *args], args):
        if before == "--log-format" or arg.startswith("--log-format="):
            return arg.removeprefix("--log-format=")
    return os.environ.get("ADPULSE_LOG_FORMAT")


def _fail(message: str, code: int):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    worker = f"worker {os.environ.get('RANK', '?')} of {world}: " if world > 1 else ""
    if _log_format == "json":
        click.echo(json.dumps({"level": "error", "message": f"{worker}{message}", "exit_code": code}, ensure_ascii=False), err=True)
    else:
        click.echo(f"Error: {worker}{message}", err=True)
    sys.exit(code)


@click.group(cls=AdPulseGroup)
@click.version_option(__version__, prog_name="adpulse-batch")
def cli():
    """Turn product catalogs into ad copy with an open model (BLOOM, Llama, Qwen, ...), as a batch job.

    \b
    Example:
        adpulse-batch run catalog.parquet -o catalog.ads.parquet
    """


def device_options(command):
    """--device, --dtype: where the model runs, in which precision."""
    command = click.option(
        "--dtype",
        type=click.Choice(DTYPES),
        default="auto",
        show_default=True,
        envvar="ADPULSE_DTYPE",
        help="auto: bfloat16 on GPUs that support it (else float16) and on CPUs that compute in it (AVX512-BF16 or AMX, "
        "where it ran 2-2.4x as fast as float32 in our benchmarks: see the README); float32 on other CPUs (and for finetune on CPU). float32 writes a row's ad the same "
        "whatever its batch or worker count. Env: ADPULSE_DTYPE.",
    )(command)
    return click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="auto: a CUDA GPU when there is one.")(command)


def model_options(command):
    """--model, --adapter, --engine, --device, --dtype: which model writes the ads, and where it runs."""

    @click.option(
        "--model",
        envvar="ADPULSE_MODEL",
        metavar="DIR|HUB_ID",
        help="Base model (directory or Hub id). Default: the base model the adapter records. Env: ADPULSE_MODEL.",
    )
    @click.option(
        "--adapter",
        envvar="ADPULSE_ADAPTER",
        default=DEFAULT_ADAPTER,
        show_default=True,
        metavar="DIR|HUB_ID|none",
        help="PEFT LoRA adapter (directory or Hub id), merged into the base; 'none' for the base model alone. Env: ADPULSE_ADAPTER.",
    )
    @click.option(
        "--engine",
        envvar="ADPULSE_ENGINE",
        type=click.Choice(list(ENGINES)),
        default="torch",
        show_default=True,
        help="What generates: torch (our batched decoding over transformers, CPU or one GPU per worker) or vllm "
        "(vLLM's offline engine; an extra). Env: ADPULSE_ENGINE.",
    )
    @click.option("--gpu-memory-utilization", type=float, default=0.9, show_default=True, help="--engine vllm: share of each GPU's memory vLLM may take.")
    @click.option("--max-num-seqs", type=int, default=256, show_default=True, help="--engine vllm: most sequences it runs at once.")
    @click.option("--tensor-parallel-size", type=int, default=1, show_default=True, help="--engine vllm: GPUs one model is split across (a model too large for one).")
    @click.option("--vllm-lora", type=click.Choice(VLLM_LORA), default="auto", show_default=True,
                  help="--engine vllm: an adapter as vLLM's LoRARequest, or merged into the base once; auto: request on GPUs, merge on CPU and for BLOOM.")
    @device_options
    @functools.wraps(command)
    def wrapper(*args, model, adapter, engine, gpu_memory_utilization, max_num_seqs, tensor_parallel_size, vllm_lora, device, dtype, **kwargs):
        from adpulse_batch.settings import ModelSettings, VllmSettings

        adapter = None if adapter is None or adapter.lower() == "none" else adapter
        vllm = VllmSettings(
            gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs, tensor_parallel_size=tensor_parallel_size, lora=vllm_lora
        )
        settings = ModelSettings(model=model, adapter=adapter, device=device, dtype=dtype, engine=engine, vllm=vllm)
        return command(*args, model_settings=settings, **kwargs)

    return wrapper


def base_model_options(command):
    """--model, --device, --dtype: the base model an adapter is trained on, and where."""

    @click.option(
        "--model",
        envvar="ADPULSE_MODEL",
        default=DEFAULT_BASE_MODEL,
        show_default=True,
        metavar="DIR|HUB_ID",
        help=f"Base model to train the adapter on (directory or Hub id; model type {', '.join(FAMILIES)}). Env: ADPULSE_MODEL.",
    )
    @device_options
    @functools.wraps(command)
    def wrapper(*args, model, device, dtype, **kwargs):
        from adpulse_batch.settings import ModelSettings

        return command(*args, model_settings=ModelSettings(model=model, adapter=None, device=device, dtype=dtype), **kwargs)

    return wrapper


def column_options(command):
    """--product-column, --description-column: which catalog columns hold the product."""
    command = click.option(
        "--description-column",
        metavar="COLUMN|none",
        help="Column with the description. Default: the first of description, product_description, desc, body; "
        "'none' when the catalog has no description.",
    )(command)
    return click.option(
        "--product-column",
        metavar="COLUMN",
        help="Column with the product name. Default: the first of product, product_name, name, title (any case).",
    )(command)


def chat_option(command):
    """--chat/--no-chat: prompts through the tokenizer's chat template, for instruct models."""
    return click.option(
        "--chat/--no-chat",
        default=None,
        help="Render prompts through the tokenizer's chat template (the template's instruction as the system message, "
        "product and description as the user message). Default: as the adapter was trained; plain for a new adapter.",
    )(command)


def load_job(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """--job FILE: a TOML file of run options; flags on the command line override it.

    Keys are option names (`batch_size` or `batch-size`); relative paths in it are relative
    to the file, so a crontab line can run it from anywhere.
    """
    if value is None:
        return
    import tomllib

    try:
        options = tomllib.loads(value.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise click.BadParameter(f"{value} is not a readable TOML file ({error})", param_hint="'--job'") from None
    if _log_format_in(ctx.obj["args"]) is None and options.get("log-format", options.get("log_format")) == "json":
        global _log_format
        _log_format = "json"  # the job's own errors follow its log format too
    params = {p.name: p for p in ctx.command.params if p.name != "job" and p.expose_value}
    defaults = {}
    for key, setting in options.items():
        name = key.replace("-", "_")
        if name not in params:
            raise click.BadParameter(f"{value}: {key!r} is not a run option (see adpulse-batch run --help)", param_hint="'--job'")
        expected = _job_value_type(params[name], setting)
        if expected is not None:
            raise click.BadParameter(f"{value}: {key!r} must be {expected}, not {_toml_text(setting)}", param_hint="'--job'")
        if (name in JOB_PATHS and not is_uri(setting)) or (name in ("model", "adapter") and (value.parent / str(setting)).exists()):
            setting = os.path.abspath(value.parent / str(setting))
        defaults[name] = setting
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


JOB_PATHS = {"input", "output", "template", "report", "html_report", "banned_words", "work_dir", "cache"}


def _job_value_type(param: click.Parameter, setting) -> str | None:
    """The type a job file's value should have had, or None when it has it. TOML values are
    typed: `limit = 3.7` or `limit = true` is a mistake to point at, not 3 or 1 rows."""
    if getattr(param, "is_flag", False):
        expected, fits = "true or false", isinstance(setting, bool)
    elif isinstance(param.type, click.types.IntParamType):
        expected, fits = "an integer", isinstance(setting, int) and not isinstance(setting, bool)
    elif isinstance(param.type, click.types.FloatParamType):
        expected, fits = "a number", isinstance(setting, (int, float)) and not isinstance(setting, bool)
    else:  # text: names, paths, choices; a whole number too (num-processes = 4)
        expected, fits = "a string", isinstance(setting, (str, int)) and not isinstance(setting, bool)
    return None if fits else expected


def _toml_text(setting) -> str:
    """A TOML value as the job file spells it."""
    if isinstance(setting, bool):
        return str(setting).lower()
    if isinstance(setting, str):
        return json.dumps(setting, ensure_ascii=False)
    if isinstance(setting, (list, dict)):
        return "an array" if isinstance(setting, list) else "a table"
    return setting.isoformat() if hasattr(setting, "isoformat") else str(setting)


@cli.command()
@click.option("--job", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE", is_eager=True, expose_value=False,
              callback=load_job, help="Read run options from a TOML job file (flags given here override it).")
# INPUT and -o stay text: pathlib would fold the "//" of an s3:// URI.
@click.argument("input", required=False)
@click.option("-o", "--output", metavar="PATH|URI", help="Output file (.csv, .parquet or .jsonl), a local path or an s3://, gs:// or hf:// URI. Default: <stem>.ads.<suffix> beside the input.")
@column_options
@click.option("--ad-column", default="ad_copy", show_default=True, help="Name of the new ad column (<name>_1..<name>_K with --num-variants K).")
@click.option("--status-column", default="ad_status", show_default=True, help="Name of the new status column.")
@click.option("--flags-column", default="ad_flags", show_default=True, help="Name of the new column of quality flags (<name>_1..<name>_K with --num-variants K).")
@click.option("--no-flags", is_flag=True, help="Leave the quality flags column out.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of CSV and JSONL input.")
@click.option("--limit", type=int, metavar="N", help="Process only the first N rows (to try a setting on a big file).")
@model_options
@click.option("--template", type=click.Path(path_type=Path), metavar="FILE", help="Prompt template file with {product} and {description}. Default: the adapter's own, else the AdPulse prompt.")
@chat_option
@click.option("--batch-size", type=int, help="Requests generated together.  [default: 128 with --engine torch (fewer where their cache would pass 4 GiB), 1024 with vllm]")
@click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Most tokens per ad.")
@click.option("--max-prompt-tokens", type=int, default=256, show_default=True, help="Longer prompts have their description cut to fit (status 'ok: input truncated').")
@click.option("--num-variants", type=int, default=1, show_default=True, help="Ads per product (needs --temperature above 0).")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy. Above 0: sampled.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling threshold.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampled ads (per row and variant, so reruns repeat).")
@click.option("--channel", type=click.Choice(list(CHANNELS)), help="Where the ads go: fit each to the channel's length (and emoji rule).")
@click.option("--max-chars", type=int, metavar="N", help="Fit each ad to at most N characters (overrides the --channel limit).")
@click.option("--banned-words", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE", help="A file of words and phrases (one a line) the model may not write; flagged banned-word if one still appears.")
@click.option("--cache", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH", help="The ad cache file. Default: ~/.cache/adpulse-batch/ads.sqlite.")
@click.option("--no-cache", is_flag=True, help="Neither look ads up in the cache nor store them there.")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False), metavar="DIR", help="Where results are committed as they come, for a rerun to resume. Default: .<output>.adpulse-work beside the output.")
@click.option("--keep-work", is_flag=True, help="Keep the work directory after a successful run.")
@click.option("--no-csv-safe", is_flag=True, help="Write ads to CSV as they are, even when they start like a spreadsheet formula.")
@click.option("--report", type=click.Path(path_type=Path), metavar="PATH", help="Write a JSON report of the run here.")
@click.option("--html-report", type=click.Path(path_type=Path), metavar="PATH", help="Write a self-contained HTML page of the run's counts, ad lengths and a sample of rows here.")
@click.option(
    "--num-processes",
    default="1",
    show_default=True,
    metavar="N|auto",
    help="Worker processes (one per GPU), started through accelerate's launcher; auto: one per visible GPU.",
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True, envvar="ADPULSE_LOG_FORMAT",
              help="json: log lines, errors and the summary as JSON objects, one per line (for log shippers). Env: ADPULSE_LOG_FORMAT.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no log lines, no summary.")
@click.pass_context
def run(ctx, input, output, product_column, description_column, ad_column, status_column, flags_column, no_flags, encoding,
        limit, model_settings, template, chat, batch_size, max_new_tokens, max_prompt_tokens, num_variants, temperature, top_p,
        seed, channel, max_chars, banned_words, cache, no_cache, work_dir, keep_work, no_csv_safe, report, html_report,
        num_processes, log_format, quiet):
    """Write an ad for every product of a catalog.

    INPUT is a .csv, .parquet or .jsonl catalog, or a directory of Parquet files, on local
    disk or in object storage (s3://, gs://, hf:// or file:// URIs). The output
    has every input row once, in order, unchanged, plus the ad, status and flags columns.
    Exit codes: 0 done, 2 bad input or usage, 3 another run is writing the output, 1 anything else.

    \b
    Examples:
        adpulse-batch run catalog.parquet
        adpulse-batch run catalog.csv -o ads.csv --adapter adapters/mine --limit 20
        adpulse-batch run catalog.csv --channel google-ads-headline --banned-words banned.txt --html-report ads.html
        adpulse-batch run s3://shop/catalog.parquet -o s3://shop/catalog.ads.parquet
        adpulse-batch run --job jobs/nightly.toml
    """
    from adpulse_batch.banned import load_banned_words
    from adpulse_batch.settings import GenerationSettings, RunSettings

    _setup_logging(quiet, log_format)
    if input is None:
        raise click.UsageError("Missing argument 'INPUT' (give it, or `input` in a --job file).", ctx=ctx)
    if no_cache and cache is not None:
        raise click.UsageError("Use just one of --cache and --no-cache.", ctx=ctx)
    settings = RunSettings(
        input=input,
        output=output,
        product_column=product_column,
        description_column=description_column,
        ad_column=ad_column,
        status_column=status_column,
        flags_column=None if no_flags else flags_column,
        encoding=encoding,
        limit=limit,
        template=template,
        chat=chat,
        model=model_settings,
        generation=GenerationSettings(
            max_new_tokens=max_new_tokens,
            num_variants=num_variants,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            max_chars=max_chars,
            channel=channel,
            banned_words=load_banned_words(banned_words).phrases if banned_words is not None else (),
        ),
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        report=report,
        html_report=html_report,
        work_dir=work_dir,
        keep_work=keep_work,
        cache=cache,
        use_cache=not no_cache,
        csv_safe=not no_csv_safe,
    )
    processes = _worker_count(num_processes)
    if processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        _launch(ctx.obj["args"], processes, settings)
    from adpulse_batch.run import run_catalog

    summary = run_catalog(settings, progress=not quiet and log_format == "text" and sys.stderr.isatty())
    if summary is not None and not quiet:
        log.info(summary.line(), extra={"summary": summary.counts()})


def _worker_count(value: str) -> int:
    if value == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r} is not a number of processes or 'auto'", param_hint="'--num-processes'")
    return int(value)


def _launch(args: list[str], processes: int, settings) -> None:
    """Check the job once here, then run it in `processes` workers and exit with their code."""
    from adpulse_batch.lock import OutputLock
    from adpulse_batch.run import prepare, work_dir_for
    from adpulse_batch.shard import launch_workers
    from adpulse_batch.workdir import WorkDir

    job = prepare(settings)  # bad input or a missing model: one line now, not one per worker
    with OutputLock(job.output):
        pass  # another run holds it: exit 3 now (the main worker takes it for real)
    WorkDir(work_dir_for(settings, job.output), 1).check(job.output)
    code = launch_workers(_without_option(args, "--num-processes"), processes)
    if code != 0:
        failed = WorkDir(work_dir_for(settings, job.output), 1).failures()
        if not failed:
            _fail(f"the workers exited with code {code}; no output was written", 1)
        _fail(f"worker {failed[0]['rank']} of {processes} failed: {failed[0]['error']}; no output was written", failed[0]["exit_code"])
    sys.exit(0)


def _without_option(args: list[str], name: str) -> list[str]:
    """`args` less `name VALUE` / `name=VALUE`."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


@cli.command()
@click.argument("data")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, metavar="ADAPTER_DIR", help="Directory to write the adapter (and its checkpoints) to.")
@column_options
@click.option("--ad-column", metavar="COLUMN", help="Column with the ad to learn. Default: the first of ad, ad_copy, ad_text, advert, advertisement.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of CSV and JSONL data.")
@click.option("--template", type=click.Path(path_type=Path), metavar="FILE", help="Prompt template file with {product} and {description}; saved with the adapter. Default: the AdPulse prompt.")
@chat_option
@base_model_options
@click.option("--lora-r", type=int, default=16, show_default=True, help="LoRA rank.")
@click.option("--lora-alpha", type=int, default=32, show_default=True, help="LoRA scaling numerator (the update is scaled by alpha / r).")
@click.option("--lora-dropout", type=float, default=0.05, show_default=True, help="Dropout on the adapter's input during training.")
@click.option("--lora-target-modules", metavar="NAMES", help="Comma-separated linear layers to adapt, or all-linear. Default: PEFT's for the model's family (BLOOM: query_key_value; Llama, Mistral, Qwen, Gemma: q_proj,v_proj; Phi-3: qkv_proj).")
@click.option("--learning-rate", type=float, default=1e-3, show_default=True, help="Peak learning rate (AdamW; linear warmup, then linear decay).")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Examples per device per forward pass.")
@click.option("--grad-accum", type=int, default=4, show_default=True, help="Forward passes per optimizer step.")
@click.option("--max-steps", type=int, help="Optimizer steps to train.  [default: 100, unless --epochs]")
@click.option("--epochs", type=int, metavar="N", help="Train N passes over the data instead of --max-steps.")
@click.option("--warmup-steps", type=int, default=100, show_default=True, help="Steps over which the learning rate rises from 0.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the initial adapter, the eval hold-out, the data order and dropout.")
@click.option("--eval-fraction", type=float, default=0.1, show_default=True, help="Share of the rows held out for the eval loss (the data's test split instead, when it has one); 0: no eval.")
@click.option("--eval-steps", type=int, default=50, show_default=True, help="Compute the eval loss every N steps (and at the end).")
@click.option("--log-steps", type=int, default=10, show_default=True, help="Log the training loss every N steps (and at the end).")
@click.option("--save-steps", type=int, default=50, show_default=True, help="Write a checkpoint every N steps (and at the end); 0: none.")
@click.option("--max-prompt-tokens", type=int, default=256, show_default=True, help="Longer prompts have their description cut to fit, as run cuts them.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in the backward pass: less memory, slower.")
@click.option("--quantize", type=click.Choice(QUANTIZE), help="Load the frozen base model in 8bit or 4bit (QLoRA; CUDA and bitsandbytes only).")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in ADAPTER_DIR (same data and settings).")
@click.option("--merge", is_flag=True, help="Also write the base model with the adapter merged in to ADAPTER_DIR/merged.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no log lines, no summary.")
def finetune(data, output, product_column, description_column, ad_column, encoding, template, chat, model_settings,
             lora_r, lora_alpha, lora_dropout, lora_target_modules, learning_rate, batch_size, grad_accum, max_steps,
             epochs, warmup_steps, seed, eval_fraction, eval_steps, log_steps, save_steps, max_prompt_tokens,
             gradient_checkpointing, quantize, resume, merge, quiet):
    """Train a LoRA adapter on (product, description, ad) rows, for `run --adapter`.

    DATA is a .csv, .parquet or .jsonl file, a directory of them (split by file name:
    train, test, ...), or a Hub dataset hf://datasets/OWNER/NAME. Each example is the prompt
    exactly as run renders it, then the ad and the end-of-text token; the loss counts the ad
    and the end-of-text token only.

    \b
    Examples:
        adpulse-batch finetune hf://datasets/c-s-ale/Product-Descriptions-and-Ads -o adapters/adpulse
        adpulse-batch finetune our_ads.csv -o adapters/ours --max-steps 300
        adpulse-batch run catalog.csv --adapter adapters/ours
    """
    from adpulse_batch.settings import FinetuneSettings, LoraSettings, TrainingSettings

    settings = FinetuneSettings(
        data=data,
        output=output,
        product_column=product_column,
        description_column=description_column,
        ad_column=ad_column,
        encoding=encoding,
        template=template,
        chat=bool(chat),
        model=model_settings,
        lora=LoraSettings(
            r=lora_r,
            alpha=lora_alpha,
            dropout=lora_dropout,
            target_modules=tuple(name.strip() for name in lora_target_modules.split(",")) if lora_target_modules is not None else None,
        ),
        training=TrainingSettings(
            learning_rate=learning_rate,
            batch_size=batch_size,
            grad_accum=grad_accum,
            max_steps=max_steps,
            epochs=epochs,
            warmup_steps=warmup_steps,
            seed=seed,
            log_steps=log_steps,
            eval_steps=eval_steps,
            save_steps=save_steps,
            gradient_checkpointing=gradient_checkpointing,
            quantize=quantize,
        ),
        max_prompt_tokens=max_prompt_tokens,
        eval_fraction=eval_fraction,
        resume=resume,
        merge=merge,
    )
    # Under `accelerate launch` every process runs this command; only the first one talks.
    quiet = quiet or os.environ.get("RANK", "0") != "0"
    _setup_logging(quiet)
    from adpulse_batch.finetune import finetune as train

    try:
        summary = train(settings, progress=not quiet and sys.stderr.isatty())
    except KeyboardInterrupt as stop:
        _fail(f"interrupted; pass --resume to continue from the newest checkpoint in {output}, if one was written",
              getattr(stop, "exit_code", 130))  # fmt: skip
    if not quiet:
        click.echo(summary.line(), err=True)


@cli.command("make-test-model")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(list(FAMILIES)), default="bloom", show_default=True, help="The model family: its architecture and its tokenizer's quirks (BOS, end-of-text ids, chat template).")
@click.option("--adapter", "adapter_dir", type=click.Path(path_type=Path), metavar="DIR", help="Also write a random LoRA adapter for it here.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
def make_test_model(directory, arch, adapter_dir, seed):
    """Write a tiny random model and a tokenizer trained on the spot (no download).

    For smoke-testing pipelines in seconds: the ads are gibberish, but every step of a
    real run happens.

    \b
    Example:
        adpulse-batch make-test-model /tmp/tiny --adapter /tmp/tiny-adapter
        adpulse-batch run sample_catalogs/catalog.csv --adapter /tmp/tiny-adapter
        adpulse-batch make-test-model /tmp/tiny-qwen --arch qwen2
        adpulse-batch run sample_catalogs/catalog.csv --model /tmp/tiny-qwen --adapter none --chat
    """
    _setup_logging(quiet=False)
    from adpulse_batch.testmodel import make_test_model as make

    make(directory, arch=arch, adapter_path=adapter_dir, seed=seed)
    click.echo(f"wrote a test {arch} model to {directory}" + (f" and an adapter to {adapter_dir}" if adapter_dir else ""), err=True)


def _setup_logging(quiet: bool, log_format: str = "text") -> None:
    global _log_format
    _log_format = log_format
    # Of several worker processes, only the main one tells the story; all report errors.
    chatty = not quiet and os.environ.get("RANK", "0") == "0"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter("adpulse-batch: %(message)s"))
    # Replace, not add: a process that runs several commands (a test, a notebook) logs each
    # to the stderr and level of the command at hand.
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if chatty else logging.WARNING)
    # The libraries' own chatter (weight-loading bars, retries, deprecation notices) is not
    # ours to show: a failure reaches the user as our one-line error.
    from huggingface_hub import utils as hub_utils

    hub_utils.logging.set_verbosity_error()
    hub_utils.disable_progress_bars()  # transformers' bars follow this when it is imported
    if "transformers" in sys.modules:  # already imported (a notebook, a test): set it directly
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    else:  # read when it is imported; importing it here would cost a run whose ads are all cached a second
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    for name in ("peft", "accelerate", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message (and the counts, for the summary)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "summary", {}))
        return json.dumps(entry, ensure_ascii=False)


def main():
    cli(prog_name="adpulse-batch")
