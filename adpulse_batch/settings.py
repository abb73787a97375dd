"""Typed settings for the commands. Each field is documented and checked on creation, with
messages that name the command-line flag, so a notebook caller gets the same errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adpulse_batch.errors import SettingsError

DEFAULT_ADAPTER = "abhamidi-1234/AdPulse"
DEFAULT_BASE_MODEL = "bigscience/bloom-1b7"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# `--description-column none`: the catalog has no description; prompts use the product alone.
NO_COLUMN = "none"


def _at_least(value, minimum, flag: str) -> None:
    if value is not None and value < minimum:
        raise SettingsError(f"{flag} must be at least {minimum}, not {value}")


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

    def __post_init__(self):
        if self.device not in DEVICES:
            raise SettingsError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.dtype not in DTYPES:
            raise SettingsError(f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.adapter is None and self.model is None:
            raise SettingsError("--adapter none needs --model: without an adapter there is no base model to fall back on")


@dataclass(frozen=True)
class GenerationSettings:
    """How each ad is generated. Every field changes the text, so all of them are recorded
    in reports (and, later, in cache keys)."""

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
    """Cut each ad to at most this many characters, at a word boundary."""
    min_new_tokens: int = 0
    """Tokens to generate before EOS may end an ad (benchmarks use it to compare like with like)."""

    def __post_init__(self):
        _at_least(self.max_new_tokens, 1, "--max-new-tokens")
        _at_least(self.num_variants, 1, "--num-variants")
        _at_least(self.max_chars, 1, "--max-chars")
        _at_least(self.seed, 0, "--seed")
        if self.temperature < 0:
            raise SettingsError(f"--temperature must be 0 (greedy) or more, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SettingsError(f"--top-p must be above 0 and at most 1, not {self.top_p}")
        if self.num_variants > 1 and self.temperature == 0:
            raise SettingsError(
                f"--num-variants {self.num_variants} needs --temperature above 0: greedy decoding writes the same ad every time"
            )
        if self.min_new_tokens > self.max_new_tokens:
            raise SettingsError("min_new_tokens cannot exceed --max-new-tokens")

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class RunSettings:
    """Everything `adpulse-batch run` needs."""

    input: Path
    """Catalog: .csv, .parquet, .jsonl, or a directory of Parquet files."""
    output: Path | None = None
    """Where to write; the format follows the suffix. None: `<stem>.ads.<suffix>` beside the input."""
    product_column: str | None = None
    """Column with the product name. None: detected (product, product_name, name, title)."""
    description_column: str | None = None
    """Column with the description. None: detected; 'none': the catalog has none."""
    ad_column: str = "ad_copy"
    """Name of the new ad column (`<name>_1`..`<name>_K` with several variants)."""
    status_column: str = "ad_status"
    """Name of the new status column: ok, `ok: input truncated` or `skipped: <reason>`."""
    encoding: str = "utf-8"
    """Text encoding of CSV and JSONL input."""
    limit: int | None = None
    """Read only the first N rows."""
    template: Path | None = None
    """Prompt template file. None: the adapter's own template, else the default one."""
    model: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    batch_size: int = 32
    """Rows generated together (prompts of similar length are batched together)."""
    max_prompt_tokens: int = 256
    """Longer prompts have their description (then product) cut to fit."""
    report: Path | None = None
    """Write a JSON report of the run here."""
    quiet: bool = False
    """No progress bar and no summary line."""
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
        for name in ("input", "output", "template", "report", "work_dir", "cache"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        _at_least(self.batch_size, 1, "--batch-size")
        _at_least(self.max_prompt_tokens, 16, "--max-prompt-tokens")
        _at_least(self.limit, 0, "--limit")
        if not self.ad_column.strip():
            raise SettingsError("--ad-column cannot be empty")
        if not self.status_column.strip():
            raise SettingsError("--status-column cannot be empty")
        if self.ad_column == self.status_column:
            raise SettingsError(f"--ad-column and --status-column are both {self.ad_column!r}; give them different names")

    @property
    def ad_columns(self) -> list[str]:
        """The names of the new ad columns."""
        k = self.generation.num_variants
        return [self.ad_column] if k == 1 else [f"{self.ad_column}_{i}" for i in range(1, k + 1)]
