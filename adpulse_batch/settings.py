"""Typed settings for the commands. Each field is documented and checked on creation, with
messages that name the command-line flag, so a notebook caller gets the same errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from adpulse_batch.errors import SettingsError

DEFAULT_ADAPTER = "abhamidi-1234/AdPulse"
DEFAULT_BASE_MODEL = "bigscience/bloom-1b7"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZE = ("8bit", "4bit")
VLLM_LORA = ("auto", "request", "merge")
# `--description-column none`: the catalog has no description; prompts use the product alone.
NO_COLUMN = "none"


def check_utf8_name(name, flag: str) -> None:
    """File names go to Arrow, SQLite and JSON, which take UTF-8 only: refuse another name
    (a byte of a legacy encoding) now, naming it, rather than fail on it mid-run."""
    try:
        str(name).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise SettingsError(f"{flag} {shown}: the name is not UTF-8; rename it, or link to it from a UTF-8 name") from None


def _at_least(value, minimum, flag: str) -> None:
    if value is not None and value < minimum:
        raise SettingsError(f"{flag} must be at least {minimum}, not {value}")


@dataclass(frozen=True)
class VllmSettings:
    """What vLLM (`--engine vllm`) needs to know of the machine; the torch engine ignores it."""

    gpu_memory_utilization: float = 0.9
    """Share of each GPU's memory vLLM may take (weights, activations and its KV cache)."""
    max_num_seqs: int = 256
    """Most sequences vLLM runs at once."""
    tensor_parallel_size: int = 1
    """GPUs one model is split across (a model too large for one GPU); each worker takes that many."""
    lora: str = "auto"
    """How an adapter reaches vLLM: `request` (its LoRARequest), `merge` (merged into the base
    once, kept under the cache), `auto` (request on GPUs; merge on CPU, where vLLM's LoRA
    kernels are slow, and for BLOOM, which vLLM has no LoRA for)."""

    def __post_init__(self):
        if self.lora not in VLLM_LORA:
            raise SettingsError(f"--vllm-lora must be one of {', '.join(VLLM_LORA)}, not {self.lora!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise SettingsError(f"--gpu-memory-utilization must be above 0 and at most 1, not {self.gpu_memory_utilization}")
        _at_least(self.max_num_seqs, 1, "--max-num-seqs")
        _at_least(self.tensor_parallel_size, 1, "--tensor-parallel-size")


@dataclass(frozen=True)
class ModelSettings:
    """Which model writes the ads, and where it runs."""

    model: str | None = None
    """Base model: a directory or Hub id. None: the base recorded by the adapter."""
    adapter: str | None = DEFAULT_ADAPTER
    """PEFT LoRA adapter: a directory or Hub id. None: the base model alone."""
    device: str = "auto"
    """auto (a CUDA GPU when there is one), cpu or cuda."""
    dtype: str = "auto"
    """auto (bfloat16 on GPUs that have it, else float16 on GPU, float32 on CPU) or a dtype name."""
    engine: str = "torch"
    """What generates: a name of `adpulse_batch.engines.ENGINES`."""
    vllm: VllmSettings = field(default_factory=VllmSettings)

    def __post_init__(self):
        from adpulse_batch.engines import ENGINES

        if self.engine not in ENGINES:
            raise SettingsError(f"--engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.device not in DEVICES:
            raise SettingsError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.dtype not in DTYPES:
            raise SettingsError(f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        for name, flag in ((self.model, "--model"), (self.adapter, "--adapter")):
            check_utf8_name(name, flag)
        if self.adapter is None and self.model is None:
            raise SettingsError("--adapter none needs --model: without an adapter there is no base model to fall back on")


@dataclass(frozen=True)
class GenerationSettings:
    """How each ad is generated. Every field changes the text, so all of them are recorded
    in reports and in cache keys."""

    max_new_tokens: int = 64
    """Most tokens generated per ad; generation also stops at EOS and at a new `###` section."""
    num_variants: int = 1
    """Ads per product; more than one needs sampling (temperature above 0)."""
    temperature: float = 0.0
    """0: greedy (the same ad every time). Above 0: sampled."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p."""
    seed: int = 0
    """Seed of sampled ads; each row and variant draws from its own seeded generator."""
    max_chars: int | None = None
    """Fit each ad to at most this many characters (the channel's limit, when there is one)."""
    channel: str | None = None
    """Where the ads go (`channels.CHANNELS`): their length limit and whether emoji are allowed."""
    banned_words: tuple[str, ...] = ()
    """Words and phrases the model may not write (whole words, any casing)."""

    def __post_init__(self):
        from adpulse_batch.banned import BannedWords
        from adpulse_batch.channels import find_channel

        _at_least(self.max_new_tokens, 1, "--max-new-tokens")
        _at_least(self.num_variants, 1, "--num-variants")
        _at_least(self.max_chars, 1, "--max-chars")
        object.__setattr__(self, "banned_words", BannedWords(tuple(self.banned_words)).phrases)
        find_channel(self.channel, max_chars=self.max_chars)  # an unknown name is refused here
        _at_least(self.seed, 0, "--seed")
        if not 0 <= self.temperature < math.inf:  # NaN too: every comparison with it is false
            raise SettingsError(f"--temperature must be 0 (greedy) or a finite number above it, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SettingsError(f"--top-p must be above 0 and at most 1, not {self.top_p}")
        if self.num_variants > 1 and self.temperature == 0:
            raise SettingsError(
                f"--num-variants {self.num_variants} needs --temperature above 0: greedy decoding writes the same ad every time"
            )

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    @property
    def target_channel(self):
        """The `channels.Channel` ads are fitted to: the channel's, or --max-chars alone; None: no limit."""
        from adpulse_batch.channels import find_channel

        return find_channel(self.channel, max_chars=self.max_chars)


@dataclass(frozen=True)
class RunSettings:
    """Everything `adpulse-batch run` needs."""

    input: Path
    """Catalog: .csv, .parquet, .jsonl, or a directory of Parquet files; a local path, or an
    s3://, gs://, hf:// or file:// URI (kept as a `storage.ObjectPath`)."""
    output: Path | None = None
    """Where to write; the format follows the suffix; a local path or a URI, as `input`.
    None: `<stem>.ads.<suffix>` beside the input."""
    product_column: str | None = None
    """Column with the product name. None: detected (product, product_name, name, title)."""
    description_column: str | None = None
    """Column with the description. None: detected; 'none': the catalog has none."""
    ad_column: str = "ad_copy"
    """Name of the new ad column (`<name>_1`..`<name>_K` with several variants)."""
    status_column: str = "ad_status"
    """Name of the new status column: ok, `ok: input truncated`, `failed: empty ad` or `skipped: <reason>`."""
    flags_column: str | None = "ad_flags"
    """Name of the new column of quality flags (`<name>_1`..`<name>_K` with several variants); None: no flags."""
    encoding: str = "utf-8"
    """Text encoding of CSV and JSONL input."""
    limit: int | None = None
    """Read only the first N rows."""
    template: Path | None = None
    """Prompt template file. None: the adapter's own template, else the default one."""
    chat: bool | None = None
    """Render prompts through the tokenizer's chat template. None: as the adapter was trained (plain by default)."""
    model: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    batch_size: int | None = None
    """Requests generated together (prompts of similar length are batched together). None: the
    engine's own (128 for torch, fewer for a model whose cache would pass 4 GiB; 1024 for vLLM, which batches them further itself)."""
    max_prompt_tokens: int = 256
    """Longer prompts have their description (then product) cut to fit."""
    report: Path | None = None
    """Write a JSON report of the run here."""
    html_report: Path | None = None
    """Write an HTML page of the run's counts, ad lengths and a sample of rows here."""
    work_dir: Path | None = None
    """Where results are committed as they come, for a rerun to resume. None: a hidden
    `.<output name>.adpulse-work` directory beside the output."""
    keep_work: bool = False
    """Keep the work directory after a successful run."""
    cache: Path | None = None
    """The ad cache file. None: ~/.cache/adpulse-batch/ads.sqlite (XDG_CACHE_HOME)."""
    use_cache: bool = True
    """Look ads up in the cache before generating, and store new ones there."""
    csv_safe: bool = True
    """In CSV output, an ad starting like a spreadsheet formula gets a leading quote."""

    def __post_init__(self):
        from adpulse_batch.storage import local_only, location

        flags = {
            "input": "input", "output": "-o/--output", "template": "--template", "report": "--report",
            "html_report": "--html-report", "work_dir": "--work-dir", "cache": "--cache",
        }  # fmt: skip
        for name, flag in flags.items():
            if getattr(self, name) is not None:
                value = getattr(self, name)
                path = location(value, flag=flag) if name in ("input", "output") else Path(local_only(value, flag=flag))
                object.__setattr__(self, name, path)
                check_utf8_name(path, flag)
        _at_least(self.batch_size, 1, "--batch-size")
        _at_least(self.max_prompt_tokens, 16, "--max-prompt-tokens")
        _at_least(self.limit, 0, "--limit")
        if not self.ad_column.strip():
            raise SettingsError("--ad-column cannot be empty")
        if not self.status_column.strip():
            raise SettingsError("--status-column cannot be empty")
        if self.status_column in (self.ad_column, *self.ad_columns):
            raise SettingsError(
                f"--status-column {self.status_column!r} is also the name of an ad column; give them different names"
            )
        if self.flags_column is not None:
            if not self.flags_column.strip():
                raise SettingsError("--flags-column cannot be empty (use --no-flags to leave the flags out)")
            taken = {self.ad_column, *self.ad_columns, self.status_column}
            if taken & {self.flags_column, *self.flags_columns}:
                raise SettingsError(f"--flags-column {self.flags_column!r} is also the name of an ad or status column; give them different names")

    @property
    def ad_columns(self) -> list[str]:
        """The names of the new ad columns."""
        return ad_column_names(self.ad_column, self.generation.num_variants)

    @property
    def flags_columns(self) -> list[str]:
        """The names of the new flags columns, one per ad column (none with flags off)."""
        return ad_column_names(self.flags_column, self.generation.num_variants) if self.flags_column is not None else []

    @property
    def new_columns(self) -> list[str]:
        """Every column the output adds to the input's, in order."""
        return [*self.ad_columns, self.status_column, *self.flags_columns]


def ad_column_names(ad_column: str, num_variants: int) -> list[str]:
    """`ad_column` for one ad per row; `ad_column_1..K` for K variants."""
    return [ad_column] if num_variants == 1 else [f"{ad_column}_{i}" for i in range(1, num_variants + 1)]


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter finetune trains. Defaults: the original AdPulse adapter's."""

    r: int = 16
    """Rank of the low-rank update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter's input during training."""
    target_modules: tuple[str, ...] | None = None
    """Names of the linear layers that get an adapter, or ("all-linear",). None: PEFT's default for
    the model's family (BLOOM: query_key_value; Llama, Mistral, Qwen, Gemma: q_proj, v_proj; Phi-3: qkv_proj)."""

    def __post_init__(self):
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        _at_least(self.r, 1, "--lora-r")
        _at_least(self.alpha, 1, "--lora-alpha")
        if not 0 <= self.dropout < 1:
            raise SettingsError(f"--lora-dropout must be at least 0 and below 1, not {self.dropout}")
        if self.target_modules is not None and (not self.target_modules or not all(name.strip() for name in self.target_modules)):
            raise SettingsError("--lora-target-modules needs one or more module names, separated by commas")


@dataclass(frozen=True)
class TrainingSettings:
    """How finetune trains. Defaults: the original AdPulse run's (which trained 100 steps with
    100 warmup steps: the learning rate rises over the whole run)."""

    learning_rate: float = 1e-3
    """Peak learning rate (AdamW, linear warmup then linear decay)."""
    batch_size: int = 4
    """Examples per device per forward pass."""
    grad_accum: int = 4
    """Forward passes per optimizer step: an optimizer step sees batch_size x grad_accum x devices examples."""
    max_steps: int | None = None
    """Optimizer steps to train. None: 100, unless `epochs` is set."""
    epochs: int | None = None
    """Passes over the training rows, instead of `max_steps`."""
    warmup_steps: int = 100
    """Steps over which the learning rate rises linearly from 0."""
    seed: int = 42
    """Seed of the adapter's initial weights, the eval hold-out, the data order and dropout."""
    log_steps: int = 10
    """Log the training loss every this many steps (and at the last step)."""
    eval_steps: int = 50
    """Compute the eval loss every this many steps (and at the last step)."""
    save_steps: int = 50
    """Write a checkpoint every this many steps (and at the last step); 0: none."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 20-30% slower."""
    quantize: str | None = None
    """Load the frozen base model in 8bit or 4bit (QLoRA) through bitsandbytes; CUDA only."""

    def __post_init__(self):
        if self.max_steps is not None and self.epochs is not None:
            raise SettingsError("use just one of --max-steps or --epochs")
        if self.max_steps is None and self.epochs is None:
            object.__setattr__(self, "max_steps", 100)
        if not self.learning_rate > 0:
            raise SettingsError(f"--learning-rate must be above 0, not {self.learning_rate}")
        _at_least(self.batch_size, 1, "--batch-size")
        _at_least(self.grad_accum, 1, "--grad-accum")
        _at_least(self.max_steps, 1, "--max-steps")
        _at_least(self.epochs, 1, "--epochs")
        _at_least(self.warmup_steps, 0, "--warmup-steps")
        _at_least(self.seed, 0, "--seed")
        _at_least(self.log_steps, 1, "--log-steps")
        _at_least(self.eval_steps, 1, "--eval-steps")
        _at_least(self.save_steps, 0, "--save-steps")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise SettingsError(f"--quantize must be one of {', '.join(QUANTIZE)}, not {self.quantize!r}")


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything `adpulse-batch finetune` needs."""

    data: str
    """Training rows: a .csv, .parquet or .jsonl file, a directory of such files (split by
    name: train, test, ...), or a Hub dataset `hf://datasets/OWNER/NAME`."""
    output: Path
    """The adapter directory to write (checkpoints go in it too)."""
    product_column: str | None = None
    """Column with the product name. None: detected (product, product_name, name, title)."""
    description_column: str | None = None
    """Column with the description. None: detected; 'none': the data has none."""
    ad_column: str | None = None
    """Column with the ad to learn. None: detected (ad, ad_copy, ad_text, advert, advertisement)."""
    encoding: str = "utf-8"
    """Text encoding of CSV and JSONL data."""
    template: Path | None = None
    """Prompt template file. None: the AdPulse prompt."""
    chat: bool = False
    """Render prompts through the tokenizer's chat template (recorded in the adapter, so run does too)."""
    model: ModelSettings = field(default_factory=lambda: ModelSettings(model=DEFAULT_BASE_MODEL, adapter=None))
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    max_prompt_tokens: int = 256
    """Longer prompts have their description (then product) cut to fit, exactly as `run` cuts them."""
    eval_fraction: float = 0.1
    """Share of the rows held out to compute the eval loss (the data's test split instead, when it
    has one); 0: no evaluation."""
    resume: bool = False
    """Continue from the latest checkpoint in `output`."""
    merge: bool = False
    """Also write the base model with the adapter merged in to `output/merged`."""

    def __post_init__(self):
        object.__setattr__(self, "data", str(self.data))
        object.__setattr__(self, "output", Path(self.output))
        for name, flag in ((self.data, "DATA"), (self.output, "-o/--output"), (self.template, "--template")):
            check_utf8_name(name, flag)
        if self.model.adapter is not None:
            raise SettingsError("finetune trains a new adapter on a base model; it does not take --adapter")
        _at_least(self.max_prompt_tokens, 16, "--max-prompt-tokens")
        if not 0 <= self.eval_fraction < 1:
            raise SettingsError(f"--eval-fraction must be at least 0 and below 1, not {self.eval_fraction}")
