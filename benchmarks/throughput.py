"""Throughput of three ways to write ads for the same catalog, measured side by side.

    python benchmarks/throughput.py                              # BLOOM, CPU preset: hidden 512, 6 layers
    python benchmarks/throughput.py --arch llama                 # Llama, CPU preset: hidden 512, 6 layers, GQA
    python benchmarks/throughput.py --preset full                # bloom-1b7's real shape (for a GPU)
    python benchmarks/throughput.py --arch llama --preset full   # Llama-3.2-1B's real shape (for a GPU)

(a) naive: one `generate` per row through an unmerged PeftModel, as the original notebook did;
(b) pipeline: transformers' `pipeline("text-generation", batch_size=B)` over the merged model;
(c) adpulse: the library path `run` takes (prompts rendered and tokenized in one call, then
    `Generator.generate` through the torch engine `load_generator` loads); also `run`:
    `run_catalog` end to end, CSV file in, CSV file out, model loading included (skipped
    where pyarrow is not installed).

All methods see the same rows, token ids, model, adapter and greedy settings and generate
exactly --new-tokens tokens per row, so nobody wins by stopping early: the model's scores
for its end-of-text token and for every token that can write `#` are zeroed (random scores
of other tokens always beat a zero), and the transformers baselines get min_new_tokens too.
Nothing is downloaded: the model has random weights from a config, the LoRA adapter is
random, the tokenizer is a byte-level BPE trained here on the prompt template and
catalog-like prose (so prompts have realistic token counts; with Llama's BOS for --arch
llama), and the catalog is synthetic with product and description lengths drawn from
sample_catalogs/catalog.csv.

Each method runs once untimed (warm-up), then --repeats times, interleaved so that noise from
other jobs on the machine hits every method alike; medians are reported. The greedy tokens of
every method are compared with the naive ones: a benchmark of a wrong answer is worthless.
The table goes to stdout, progress to stderr, everything to the --json file.
"""

from __future__ import annotations

import adpulse_batch  # noqa: F401  (sets MKL's reproducible mode before torch loads)

import argparse
import csv
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CATALOG = REPO / "sample_catalogs" / "catalog.csv"

# vocab None: the benchmark tokenizer's own size. A larger vocab (bloom-1b7's 250,880) keeps
# the real LM-head cost; ids the tokenizer lacks get zero output weights so greedy never picks them.
# Llama's `full` is Llama-3.2-1B: 16 layers, 32 query heads sharing 8 key/value heads,
# MLP 8192, tied embeddings; its CPU preset is the BLOOM CPU preset's size with Llama's parts.
PRESETS = {
    "bloom": {
        "micro": dict(hidden=64, layers=2, heads=2, vocab=None),  # heads of 32: the smallest vLLM's CPU attention takes
        "cpu": dict(hidden=512, layers=6, heads=8, vocab=None),
        "full": dict(hidden=2048, layers=24, heads=16, vocab=250_880),
    },
    "llama": {
        "micro": dict(hidden=64, layers=2, heads=2, kv_heads=1, mlp=128, vocab=None),
        "cpu": dict(hidden=512, layers=6, heads=8, kv_heads=4, mlp=1536, vocab=None),
        "full": dict(hidden=2048, layers=16, heads=32, kv_heads=8, mlp=8192, vocab=128_256),
    },
}
# Descriptions longer than this are left out of the length distribution: the sample catalog
# holds one 333-word row on purpose (to test truncation), which would make every batch that
# draws it a 256-token batch and the benchmark a test of padding.
MAX_DESCRIPTION_WORDS = 64
METHODS = ("naive", "pipeline", "adpulse", "run", "vllm", "run-vllm")
DEFAULT_METHODS = ("naive", "pipeline", "adpulse", "run")  # the vLLM ones where vLLM is installed and asked for


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------


def sample_rows() -> list[tuple[str, str]]:
    with open(SAMPLE_CATALOG, newline="", encoding="utf-8") as handle:
        return [(r["product_name"].strip(), r["description"].strip()) for r in csv.DictReader(handle)]


def synthetic_catalog(rows: int, seed: int, description_scale: float = 1.0) -> list[tuple[str, str]]:
    """(product, description) pairs: word counts drawn from the sample catalog's (description
    counts times `description_scale`), words drawn (with their punctuation) from its text and
    the test model's product prose."""
    from adpulse_batch.testmodel import _PROSE

    sample = sample_rows()
    name_lengths = [len(p.split()) for p, _ in sample if p]
    description_lengths = [len(d.split()) for _, d in sample if len(d.split()) <= MAX_DESCRIPTION_WORDS]
    name_words = [w for p, _ in sample for w in p.split()]
    prose_words = [w for _, d in sample for w in d.split()] + _PROSE.split()
    rng = random.Random(seed)
    catalog = []
    for _ in range(rows):
        name = " ".join(rng.choice(name_words) for _ in range(rng.choice(name_lengths))).title()
        words = round(rng.choice(description_lengths) * description_scale)
        description = " ".join(rng.choice(prose_words) for _ in range(words))
        catalog.append((name, description[:1].upper() + description[1:]))
    return catalog


def train_tokenizer(seed: int, *, bos: bool = False):
    """A byte-level BPE with BLOOM's special-token layout, trained on the template, the sample
    catalog, the test prose and a synthetic catalog drawn independently of the benchmark's;
    `bos`: it adds a BOS token to every text, as Llama 3's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from adpulse_batch.prompts import DEFAULT_TEMPLATE_TEXT
    from adpulse_batch.testmodel import _PROSE, SPECIAL_TOKENS

    corpus = [DEFAULT_TEMPLATE_TEXT] * 20 + [f"{p}: {d}" for p, d in sample_rows()] * 5 + _PROSE.splitlines() * 5
    corpus += [f"{p}: {d}" for p, d in synthetic_catalog(5000, seed + 1)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8192, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(corpus, trainer)
    if bos:
        bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )


# --- model -----------------------------------------------------------------------------


def build_model(directory: Path, tokenizer, arch: str, shape: dict, *, device, dtype, seed: int) -> tuple[Path, Path]:
    """Write a random model of `arch` and `shape` and a random LoRA adapter (r=16, alpha=32 on
    the family's default targets: query_key_value for BLOOM, as the original) to `directory`;
    returns (model_dir, adapter_dir)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from adpulse_batch.families import FAMILIES

    vocab = shape["vocab"] or len(tokenizer)
    if vocab < len(tokenizer):
        raise SystemExit(f"--vocab {vocab} is smaller than the benchmark tokenizer ({len(tokenizer)} tokens)")
    # Wider than the usual 0.02: at 0.02 a random model echoes its last prompt token for every
    # row, so all methods "agree" on one output and the check below proves nothing.
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=3, initializer_range=0.3)
    if arch == "bloom":
        config = AutoConfig.for_model("bloom", hidden_size=shape["hidden"], n_layer=shape["layers"], n_head=shape["heads"], **common)
    else:
        config = AutoConfig.for_model(
            arch, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
            num_key_value_heads=shape["kv_heads"], intermediate_size=shape["mlp"], head_dim=shape["hidden"] // shape["heads"],
            max_position_embeddings=2048, tie_word_embeddings=True, **common,
        )  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    # Zero output weights score 0, never the argmax of random scores: ids the tokenizer lacks,
    # the end-of-text id and the tokens that can write `#` (a stop) are never generated, so
    # every method generates exactly --new-tokens tokens. (The embeddings are tied: these
    # tokens' inputs are zero too, the same for every method.)
    silent = [2] + [i for i in range(len(tokenizer)) if "#" in tokenizer.decode([i])]
    with torch.no_grad():
        model.get_output_embeddings().weight[len(tokenizer) :] = 0
        model.get_output_embeddings().weight[silent] = 0
    model_dir, adapter_dir = directory / "model", directory / "adapter"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(seed + 1)
    lora = LoraConfig(
        r=16, lora_alpha=32, target_modules=list(FAMILIES[arch].lora_target_modules), lora_dropout=0.05, bias="none",
        task_type="CAUSAL_LM", init_lora_weights=False,  # random, not the identity: the adapter changes the output
    )
    get_peft_model(model, lora).save_pretrained(adapter_dir)
    del model
    return model_dir, adapter_dir


def load_unmerged(model_dir: Path, adapter_dir: Path, *, device, dtype):
    """The original notebook's model: base weights with the LoRA adapter applied on the fly."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=str(device))
    return PeftModel.from_pretrained(base, adapter_dir).eval()


# --- the methods -------------------------------------------------------------------------


def naive(model, tokenizer, texts: list[str], new_tokens: int) -> list[list[int]]:
    out = []
    with torch.inference_mode():
        for text in texts:
            batch = tokenizer(text, return_tensors="pt").to(model.device)
            sequence = model.generate(
                **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            out.append(sequence[0, batch["input_ids"].shape[1] :].tolist())
    return out


# Two tokens whose scores differ by less than this share of the largest score are a near-tie:
# float32 arithmetic in another order can rank them either way (merging the random adapter
# alone moved scores by about 2e-4 of the largest, seen here). A bug moves them by the order
# of the scores themselves.
NEAR_TIE = 1e-3


def divergence(model, tokenizer, text: str, expected: list[int], got: list[int]) -> dict:
    """Where `got` leaves `expected`, and by how much the reference model scores the two
    tokens there apart (relative to its largest score)."""
    step = next(i for i, (a, b) in enumerate(zip(expected, got)) if a != b)
    ids = tokenizer(text)["input_ids"] + expected[:step]
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=model.device)).logits[0, -1].float()
    gap = (logits[expected[step]] - logits[got[step]]).abs().item()
    return {"step": step, "score_gap": gap, "relative_gap": gap / logits.abs().max().item()}


def pipeline_tokens(pipe, texts: list[str], new_tokens: int, batch_size: int) -> list[list[int]]:
    outputs = pipe(
        texts, batch_size=batch_size, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
        return_tensors=True, pad_token_id=pipe.tokenizer.pad_token_id,
        add_special_tokens=True,  # the ids every other method sees (Llama's BOS)
    )
    # Each sequence is the (padded) prompt then exactly new_tokens new ones.
    return [o[0]["generated_token_ids"][-new_tokens:] for o in outputs]


def adpulse(generator, builder, catalog: list[tuple[str, str]], batch_size: int) -> list[list[int]]:
    """What `run` does with a chunk of rows once it is read: render and tokenize the prompts
    (in one tokenizer call, as its planner does), then generate; returns each row's token ids.
    (The planner itself needs pyarrow, which a bare GPU machine may lack; `run` below is the
    whole command, files and all.)"""
    from adpulse_batch.prompts import Prompt

    texts = [builder.text(p, d) for p, d in catalog]
    prompts = [Prompt(t, ids) for t, ids in zip(texts, builder.encode_many(texts))]
    return [list(variants[0].ids) for variants in generator.generate(prompts, batch_size=batch_size)]


def run_end_to_end(catalog_csv: Path, out_dir: Path, model_dir: Path, adapter_dir: Path, args, batch_size: int | None, *,
                   engine: str = "torch", generate_seconds: list | None = None) -> list[str]:
    """`run_catalog`, as `adpulse-batch run` calls it; returns the ad column (and appends the
    run's own generation time, engine start excluded, to `generate_seconds`)."""
    from adpulse_batch.run import run_catalog
    from adpulse_batch.settings import GenerationSettings, ModelSettings, RunSettings

    output = out_dir / "ads.csv"
    settings = RunSettings(
        input=catalog_csv, output=output,
        model=ModelSettings(model=str(model_dir), adapter=str(adapter_dir), device=args.device, dtype=args.dtype, engine=engine),
        generation=GenerationSettings(max_new_tokens=args.new_tokens),
        batch_size=batch_size, use_cache=False,  # every repeat generates, as a first run does
    )
    summary = run_catalog(settings)
    if generate_seconds is not None:
        generate_seconds.append(summary.generate_seconds)
    with open(output, newline="", encoding="utf-8") as handle:
        return [r["ad_copy"] for r in csv.DictReader(handle)]


def start_vllm(arch: str, model_dir: Path, adapter_dir: Path, merged_dir: Path, *, device, dtype, max_model_len: int):
    """vLLM's own offline engine on what `run --engine vllm` gives it by default: the adapter
    merged for BLOOM (vLLM has no LoRA for BLOOM) and on CPU, else through a LoRARequest.
    Returns (llm, lora_request)."""
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    merged = arch == "bloom" or device.type == "cpu"
    llm = LLM(
        model=str(merged_dir if merged else model_dir), dtype=str(dtype).removeprefix("torch."), seed=0,
        enable_prefix_caching=True, max_model_len=max_model_len, enable_lora=not merged, max_lora_rank=16,
    )  # fmt: skip
    return llm, None if merged else LoRARequest("adapter", 1, str(adapter_dir))


def vllm_tokens(llm, lora, prompt_ids: list[list[int]], new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
    """One `LLM.generate` over every prompt, greedy, with the stops run gives it. The prefix
    cache is emptied first: otherwise a repeat finds every prompt cached by the one before,
    which `run --engine vllm`, starting its engine afresh, never does."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm.reset_prefix_cache()

    params = SamplingParams(temperature=0, max_tokens=new_tokens, stop=["###"], stop_token_ids=stop_ids, include_stop_str_in_output=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False, lora_request=lora)
    return [list(o.outputs[0].token_ids) for o in outputs]


# --- measuring -------------------------------------------------------------------------


def reset_peak_rss() -> None:
    try:  # Linux: "5" resets the peak resident set size of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _busy_jiffies() -> tuple[int, int]:
    """(CPU time of the whole machine, of this process and the children it has waited for:
    a method run as a process of its own is not "other load"), in clock ticks."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return sum(values) - values[3] - values[4], sum(int(f) for f in own[11:15])  # utime, stime, cutime, cstime


class OtherLoad:
    """How busy other processes kept the machine's cores (0: idle, 1: all cores busy).
    This machine is shared; a figure measured while others ran is marked as such."""

    def __init__(self):
        self.hz, self.cores = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
        self.reset()

    def reset(self) -> None:
        self.start, (self.busy, self.own) = time.monotonic(), _busy_jiffies()

    def fraction(self) -> float:
        busy, own = _busy_jiffies()
        elapsed = max(time.monotonic() - self.start, 1e-3)
        return max(0.0, ((busy - self.busy) - (own - self.own)) / (elapsed * self.hz * self.cores))


def wait_for_quiet(threshold: float, max_wait: float) -> float:
    """Wait (at most `max_wait` s) until other processes use under `threshold` of the
    machine for two seconds running; returns the seconds waited."""
    if threshold >= 1 or not Path("/proc/stat").exists():
        return 0.0
    started, quiet = time.monotonic(), 0
    load = OtherLoad()
    while time.monotonic() - started < max_wait:
        load.reset()
        time.sleep(1.0)
        quiet = quiet + 1 if load.fraction() < threshold else 0
        if quiet >= 2:
            break
    return time.monotonic() - started


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device, dtype, seconds: float) -> dict:
    """FLOP/s of a large square matmul in the benchmark's dtype: the machine's ceiling."""
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    rates = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        start = time.perf_counter()
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
        synchronize(device)
        rates.append((10 if device.type == "cuda" else 1) * 2 * n**3 / (time.perf_counter() - start))
    return {"n": n, "best_flops": max(rates), "median_flops": statistics.median(rates), "samples": len(rates)}


@dataclass
class Work:
    """FLOPs of the model per row: 2 x weights per token through the layers, 2 x vocab x
    hidden per token whose logits are computed, 4 x hidden per layer per (query, key) pair."""

    body_params: int
    hidden: int
    layers: int
    vocab: int

    def attention(self, queries: int, keys: int) -> int:
        return 4 * self.hidden * self.layers * queries * keys

    def useful(self, prompt: int, new: int) -> int:
        """The work of one row alone, prompt recomputed in full, no padding (the same
        figure for every method, so each method's fraction of the ceiling compares)."""
        fed = prompt + new - 1  # the last new token is never fed back
        causal_pairs = fed * (fed + 1) // 2
        return 2 * self.body_params * fed + 2 * self.vocab * self.hidden * new + self.attention(1, causal_pairs)

    def adpulse_executed(self, prefix: int, tails: list[int], new: int, batch_size: int) -> int:
        """What the engine computes: the shared prefix once, then per length-sorted batch the
        padded tails (attention over every slot up to the prompt end) and the decode steps."""
        total = 2 * self.body_params * prefix + self.attention(1, prefix * (prefix + 1) // 2)
        tails = sorted(tails, reverse=True)
        for first in range(0, len(tails), batch_size):
            batch = tails[first : first + batch_size]
            rows, width = len(batch), batch[0]
            total += rows * (2 * self.body_params * width + self.attention(width, prefix + width))
            total += rows * sum(2 * self.body_params + self.attention(1, prefix + width + step + 1) for step in range(new - 1))
            total += rows * new * 2 * self.vocab * self.hidden
        return total


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- main ------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(PRESETS), default="bloom", help="model family (default: bloom)")
    parser.add_argument(
        "--preset", choices=("micro", "cpu", "full"), default="cpu",
        help="model shape: cpu (hidden 512 x 6 layers, the default), full (bloom-1b7, or Llama-3.2-1B with --arch llama), micro (tests)",
    )
    parser.add_argument("--vocab", type=int, help="override the preset's vocabulary size")
    parser.add_argument("--rows", type=int, default=256, help="catalog rows (default 256)")
    parser.add_argument("--naive-rows", type=int, help="run (a) naive on every k-th row only, about this many (default: all rows)")
    parser.add_argument(
        "--description-scale", type=float, default=1.0,
        help="multiply the sample catalog's description lengths (2.5 gives prompts of about 95 tokens; default 1: about 70)",
    )
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row, exactly (default 32)")
    parser.add_argument("--batch-size", type=int, help="batch size of (b) and (c) (default: run's --batch-size default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method; medians are reported (default 3)")
    parser.add_argument(
        "--methods", default=",".join(DEFAULT_METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (default {','.join(DEFAULT_METHODS)}; vllm and run-vllm need vLLM)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto", help="auto: as run's (bfloat16 on GPUs and on CPUs with bfloat16 arithmetic, else float32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ceiling-seconds", type=float, default=5.0, help="time spent measuring the matmul ceiling")
    parser.add_argument("--quiet-below", type=float, default=0.1, help="before each timed run, wait until other processes use less than this share of the cores (1: never wait)")
    parser.add_argument("--max-wait", type=float, default=300.0, help="longest wait for a quiet machine before a timed run, in seconds")
    parser.add_argument("--json", type=Path, help="write the results here (default: throughput-<preset>-<device>.json)")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if "run" in args.methods and "adpulse" not in args.methods:
        parser.error("--methods: run is checked against adpulse; include both")
    if "run-vllm" in args.methods and "vllm" not in args.methods:
        parser.error("--methods: run-vllm is checked against vllm; include both")
    if unknown or "naive" not in args.methods:
        parser.error(f"--methods takes {', '.join(METHODS)} and must include naive (the reference): got {args.methods}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="adpulse-bench-"))
    try:
        return measure(args, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # the model files (3.4 GB for bloom-1b7 in bf16)


def measure(args, work_dir: Path) -> int:
    """Build the model, adapter, tokenizer and catalog in `work_dir`, time every method,
    print the table and write the JSON; the exit code."""
    from transformers.utils import logging as hf_logging

    from adpulse_batch.catalog import csv_safe
    from adpulse_batch.engines import engine_class
    from adpulse_batch.generate import clean_ad, load_generator
    from adpulse_batch.model import load_model, resolve_device, resolve_dtype
    from adpulse_batch.prompts import PromptBuilder, Template
    from adpulse_batch.settings import GenerationSettings, ModelSettings, RunSettings

    hf_logging.set_verbosity_error()
    if "run" in args.methods:
        try:
            import pyarrow  # noqa: F401  (run reads and writes catalogs with it)
        except ImportError:
            log("pyarrow is not installed: leaving out `run` (end to end); the engine (c) does not need it")
            args.methods.remove("run")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    shape = dict(PRESETS[args.arch][args.preset])
    if args.vocab:
        shape["vocab"] = args.vocab
    new = args.new_tokens

    log(f"training the benchmark tokenizer; {args.rows} synthetic rows")
    tokenizer = train_tokenizer(args.seed, bos=args.arch == "llama")
    catalog = synthetic_catalog(args.rows, args.seed, args.description_scale)
    template = Template()
    builder = PromptBuilder(template, tokenizer, RunSettings(input=Path("x.csv")).max_prompt_tokens)
    texts = [template.render(p, d) for p, d in catalog]
    prompt_ids = builder.encode_many(texts)
    prompt_tokens = [len(ids) for ids in prompt_ids]
    instruction_tokens = len(tokenizer(template.prefix.split("\n\n")[0], add_special_tokens=False)["input_ids"])
    log(f"instruction {instruction_tokens} tokens; prompts {min(prompt_tokens)}-{max(prompt_tokens)}, mean {statistics.mean(prompt_tokens):.1f}")

    log(f"building a random {args.arch} ({args.preset}: {shape}) and LoRA adapter in {work_dir} ({device}, {dtype})")
    model_dir, adapter_dir = build_model(work_dir, tokenizer, args.arch, shape, device=device, dtype=dtype, seed=args.seed)
    catalog_csv = work_dir / "catalog.csv"
    with open(catalog_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["product", "description"])
        writer.writerows(catalog)

    model_settings = ModelSettings(model=str(model_dir), adapter=str(adapter_dir), device=args.device, dtype=args.dtype)
    batch_size = args.batch_size or engine_class("torch").default_batch_size(model_settings, slots=builder.max_tokens + new)  # run's
    merged = load_model(model_settings, device=device, tokenizer=tokenizer)
    unmerged = load_unmerged(model_dir, adapter_dir, device=device, dtype=dtype)
    generator = load_generator(model_settings, builder, GenerationSettings(max_new_tokens=new), device=device)
    pipe = None
    if "pipeline" in args.methods:
        from transformers import pipeline

        pipe = pipeline("text-generation", model=merged.model, tokenizer=tokenizer)
    llm = lora = None
    vllm_load_seconds = None
    if "vllm" in args.methods:
        from adpulse_batch.model import stop_ids

        merged.model.save_pretrained(work_dir / "merged")
        tokenizer.save_pretrained(work_dir / "merged")
        started = time.perf_counter()
        llm, lora = start_vllm(
            args.arch, model_dir, adapter_dir, work_dir / "merged", device=device, dtype=dtype, max_model_len=builder.max_tokens + new
        )
        vllm_load_seconds = time.perf_counter() - started
        vllm_stops = sorted(stop_ids(model_settings, tokenizer))
    generate_only: dict[str, list[float]] = {"run": [], "run-vllm": []}  # run's own generation time, per repeat

    step = max(1, round(args.rows / args.naive_rows)) if args.naive_rows else 1
    naive_index = list(range(0, args.rows, step))
    runs = {
        "naive": lambda: naive(unmerged, tokenizer, [texts[i] for i in naive_index], new),
        "pipeline": lambda: pipeline_tokens(pipe, texts, new, batch_size),
        "adpulse": lambda: adpulse(generator, builder, catalog, batch_size),
        "run": lambda: run_end_to_end(catalog_csv, work_dir, model_dir, adapter_dir, args, batch_size, generate_seconds=generate_only["run"]),
        "vllm": lambda: vllm_tokens(llm, lora, prompt_ids, new, vllm_stops),
        # run's own batch size for vLLM (its default), as a user would run it.
        "run-vllm": lambda: run_end_to_end(
            catalog_csv, work_dir, model_dir, adapter_dir, args, args.batch_size, engine="vllm", generate_seconds=generate_only["run-vllm"]
        ),
    }
    rows_of = {m: (len(naive_index) if m == "naive" else args.rows) for m in METHODS}
    warmups = {
        "naive": lambda: naive(unmerged, tokenizer, texts[:2], new),
        "pipeline": lambda: pipeline_tokens(pipe, texts[:batch_size], new, batch_size),
        "adpulse": lambda: adpulse(generator, builder, catalog[:batch_size], batch_size),
        "run": lambda: None,  # run loads its model every time; its timing includes that
        "vllm": lambda: vllm_tokens(llm, lora, prompt_ids[:8], new, vllm_stops),
        "run-vllm": lambda: None,  # starts its own vLLM every time; its timing includes that
    }

    wait_for_quiet(args.quiet_below, args.max_wait)
    ceiling = matmul_rate(device, dtype, args.ceiling_seconds)
    log(f"matmul ceiling: {ceiling['best_flops'] / 1e9:.1f} GFLOP/s best, {ceiling['median_flops'] / 1e9:.1f} median ({dtype}, n={ceiling['n']})")
    for method in args.methods:
        warmups[method]()
    seconds: dict[str, list[float]] = {m: [] for m in args.methods}
    peak: dict[str, float] = {m: 0.0 for m in args.methods}
    outputs: dict[str, list] = {}
    contention: dict[str, list[float]] = {m: [] for m in args.methods}
    waited = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for repeat in range(args.repeats):
        for method in args.methods:
            waited += wait_for_quiet(args.quiet_below, args.max_wait)
            reset_peak_rss()
            load = OtherLoad()
            synchronize(device)
            start = time.perf_counter()
            result = runs[method]()
            synchronize(device)
            seconds[method].append(time.perf_counter() - start)
            contention[method].append(load.fraction())
            peak[method] = max(peak[method], peak_rss_mb())
            if repeat == 0:
                outputs[method] = result
            elif result != outputs[method]:
                log(f"WARNING: {method} gave a different result on repeat {repeat + 1}")
            log(
                f"repeat {repeat + 1}/{args.repeats} {method}: {seconds[method][-1]:.2f} s, "
                f"{rows_of[method] / seconds[method][-1]:.2f} rows/s (other processes: {contention[method][-1]:.0%} of the cores)"
            )

    # Correctness: every method's greedy tokens against one transformers `generate` per row
    # over the merged model, the same weights (b) and (c) use. Different arithmetic (batched
    # products, float64 attention in (c), the unmerged adapter in (a), whose W x + B A x
    # rounds differently from (W + B A) x) can flip a near-tie between two tokens; a row that
    # differs is looked at where it diverges, and only a real difference of scores fails.
    # `run` is (c) with files around it: its ads must equal (c)'s exactly.
    log("reference: one generate per row over the merged model (untimed)")
    reference = dict(zip(naive_index, naive(merged.model, tokenizer, [texts[i] for i in naive_index], new)))
    agreement, divergences = {}, {}
    for method in args.methods:
        if method in ("run", "run-vllm"):
            # As run writes them to CSV: an ad starting like a formula gets a leading quote.
            engine_of = outputs["adpulse" if method == "run" else "vllm"]
            expected = [csv_safe(clean_ad(tokenizer.decode(engine_of[i], skip_special_tokens=True), cut=True)) for i in naive_index]
            got = [outputs[method][i] for i in naive_index]
            agreement[method] = sum(e == g for e, g in zip(expected, got))
            continue
        got = outputs["naive"] if method == "naive" else [outputs[method][i] for i in naive_index]
        agreement[method] = sum(reference[i] == g for i, g in zip(naive_index, got))
        divergences[method] = [
            divergence(merged.model, tokenizer, texts[i], reference[i], g) for i, g in zip(naive_index, got) if reference[i] != g
        ]
    distinct = len({tuple(t) for t in outputs["naive"]})
    if "adpulse" in outputs and any(len(ids) != new for ids in outputs["adpulse"]):
        log(f"ERROR: the engine stopped a row before {new} tokens: the methods did not do the same work")
        return 1

    embeddings = {id(m.weight): m.weight.numel() for m in (merged.model.get_input_embeddings(), merged.model.get_output_embeddings())}
    work = Work(
        body_params=sum(p.numel() for p in merged.model.parameters()) - sum(embeddings.values()),
        hidden=shape["hidden"], layers=shape["layers"], vocab=merged.model.config.vocab_size,
    )
    useful = sum(work.useful(n, new) for n in prompt_tokens)
    shared = builder.prefix_ids()
    prefix = len(shared)
    tails = [len(ids) - prefix if ids[:prefix] == shared else len(ids) for ids in prompt_ids]
    executed = work.adpulse_executed(prefix, tails, new, batch_size)
    naive_useful = sum(work.useful(prompt_tokens[i], new) for i in naive_index)

    rate = {m: rows_of[m] / median(seconds[m]) for m in args.methods}
    useful_of = {m: (naive_useful if m == "naive" else useful) for m in args.methods}
    fraction = {m: useful_of[m] / median(seconds[m]) / ceiling["best_flops"] for m in args.methods}
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {_cpu_name()}, {torch.get_num_threads()} threads",
        "cpu_flags": cpu_flags(),
        "settings": {
            "arch": args.arch, "preset": args.preset, **shape, "vocab": work.vocab, "body_params": work.body_params, "dtype": str(dtype).removeprefix("torch."),
            "rows": args.rows, "description_scale": args.description_scale, "naive_rows": len(naive_index), "new_tokens": new, "batch_size": batch_size, "repeats": args.repeats,
            "seed": args.seed, "lora": "r=16, alpha=32, the family's default targets, random", "pipeline_model": "merged",
            "prompt_tokens_mean": statistics.mean(prompt_tokens), "prompt_tokens_min": min(prompt_tokens),
            "prompt_tokens_max": max(prompt_tokens), "instruction_tokens": instruction_tokens, "shared_prefix_tokens": prefix,
            "tokenizer_vocab": len(tokenizer), "torch": torch.__version__, "python": platform.python_version(),
            "MKL_CBWR": os.environ.get("MKL_CBWR"),
        },
        "seconds": seconds,
        "other_processes_cpu_share": contention,  # per timed run: the share of the cores others used
        "seconds_waited_for_quiet": waited,
        "rows_per_s": rate,
        "naive_rows_per_s": rate.get("naive"),
        "pipeline_rows_per_s": rate.get("pipeline"),
        "adpulse_rows_per_s": rate.get("adpulse"),
        "run_rows_per_s": rate.get("run"),
        "speedup_vs_naive": rate["adpulse"] / rate["naive"] if "adpulse" in rate else None,
        "speedup_vs_pipeline": rate["adpulse"] / rate["pipeline"] if {"adpulse", "pipeline"} <= set(rate) else None,
        "new_tokens_per_s": rate["adpulse"] * new if "adpulse" in rate else None,
        "matmul_ceiling_gflops": ceiling["best_flops"] / 1e9,
        "matmul_median_gflops": ceiling["median_flops"] / 1e9,
        "ceiling_fraction": fraction,
        "adpulse_ceiling_fraction": fraction.get("adpulse"),
        "adpulse_executed_ceiling_fraction": executed / median(seconds["adpulse"]) / ceiling["best_flops"] if "adpulse" in rate else None,
        "useful_gflop": useful / 1e9,
        "adpulse_executed_gflop": executed / 1e9,
        "peak_rss_mb": peak_rss_process_mb(),
        "peak_rss_mb_by_method": peak,
        "gpu_peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "same_greedy_output_as_merged_reference": {m: f"{agreement[m]}/{len(naive_index)}" for m in agreement if m != "run"},
        "divergences": divergences,  # per method, for each row that differs: where, and the score gap there
        "run_same_as_engine": f"{agreement['run']}/{len(naive_index)}" if "run" in agreement else None,
        "run_vllm_same_as_vllm": f"{agreement['run-vllm']}/{len(naive_index)}" if "run-vllm" in agreement else None,
        # Generation alone (engine start and model loading excluded): run's own measure.
        "generate_only_seconds": {m: v for m, v in generate_only.items() if v},
        "generate_only_rows_per_s": {m: args.rows / median(v) for m, v in generate_only.items() if v},
        "vllm_load_seconds": vllm_load_seconds,
        "run_vllm_vs_vllm_generation": (
            args.rows / median(generate_only["run-vllm"]) / rate["vllm"] if generate_only["run-vllm"] and "vllm" in rate else None
        ),
        "distinct_naive_outputs": distinct,
    }
    if llm is not None:
        llm.llm_engine.engine_core.shutdown()  # its engine process, before the interpreter's exit handlers run
    print_table(results, args.methods, rows_of)
    path = args.json or Path(f"throughput-{args.arch}-{args.preset}-{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {path}")
    exact = dtype == torch.float32
    if distinct < len(naive_index) / 2:
        log(f"ERROR: only {distinct} distinct outputs over {len(naive_index)} rows: the model ignores its prompt, so agreement proves nothing")
        return 1
    for method, rows in divergences.items():
        for d in rows:
            log(f"{method}: a row leaves the reference at token {d['step']}, where the two tokens' scores differ by "
                f"{d['score_gap']:.2g} ({d['relative_gap']:.1e} of the largest score)")
    real = [m for m, rows in divergences.items() if any(d["relative_gap"] > NEAR_TIE for d in rows)]
    if "run" in agreement and agreement["run"] != len(naive_index):
        real.append("run (its ads differ from the engine's)")
    if "run-vllm" in agreement and agreement["run-vllm"] != len(naive_index):
        real.append("run-vllm (its ads differ from vLLM's own)")
    ours = [m for m in real if m.startswith(("adpulse", "run ("))]
    if real:
        # In float32 only near-ties may differ for our engine; in half precision rounding is
        # coarse enough that a real difference is reported, not fatal. The baselines and peers
        # (other engines, other arithmetic) are reported, never fatal; so is vLLM, which is
        # not batch-invariant.
        log(f"{'ERROR' if exact and ours else 'note'}: {', '.join(real)} differ from the reference beyond near-ties")
        return 1 if exact and ours else 0
    return 0


def peak_rss_process_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_flags() -> list[str]:
    """The CPU features that decide which precision is fast here (machines differ between sessions)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx_vnni")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [flag for flag in wanted if flag in have]
    except OSError:
        pass
    return []


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(results: dict, methods: list[str], rows_of: dict) -> None:
    s = results["settings"]
    print(
        f"{results['date']}  {results['device']} [{' '.join(results['cpu_flags'])}]  {s['arch']} {s['preset']} "
        f"(hidden {s['hidden']}, {s['layers']} layers, vocab {s['vocab']}, "
        f"{s['dtype']})\n{s['rows']} rows, {s['new_tokens']} new tokens each, batch {s['batch_size']}, "
        f"prompt tokens mean {s['prompt_tokens_mean']:.1f} (min {s['prompt_tokens_min']}, max {s['prompt_tokens_max']}; "
        f"instruction {s['instruction_tokens']}), median of {s['repeats']}; matmul ceiling {results['matmul_ceiling_gflops']:.1f} GFLOP/s"
    )
    names = {"naive": "(a) naive: generate per row, unmerged LoRA", "pipeline": "(b) transformers pipeline",
             "adpulse": "(c) adpulse engine (tokenize + Generator)", "run": "    adpulse run_catalog, end to end",
             "vllm": "(d) vLLM's own LLM.generate (started once)", "run-vllm": "    run_catalog --engine vllm, end to end"}
    print(f"{'method':44} {'rows':>5} {'rows/s':>8} {'tokens/s':>9} {'x naive':>8} {'ceiling':>8} {'peak MB':>8} {'same':>8} {'others':>7}")
    for m in methods:
        rate = results["rows_per_s"][m]
        same = results["same_greedy_output_as_merged_reference"].get(m) or (
            f"{results['run_same_as_engine']} (c)" if m == "run" else f"{results['run_vllm_same_as_vllm']} (d)"
        )
        print(
            f"{names[m]:44} {rows_of[m]:>5} {rate:>8.2f} {rate * s['new_tokens']:>9.1f} {rate / results['naive_rows_per_s']:>7.2f}x "
            f"{results['ceiling_fraction'][m]:>7.1%} {results['peak_rss_mb_by_method'][m]:>8.0f} {same:>8} {max(results['other_processes_cpu_share'][m]):>6.0%}"
        )
    print(f"greedy outputs: {results['distinct_naive_outputs']} distinct over {results['settings']['naive_rows']} rows of (a)")
    for m, rate in results["generate_only_rows_per_s"].items():
        print(f"{m}: generation alone (engine start and model loading excluded) {rate:.2f} rows/s")
    if results["vllm_load_seconds"] is not None:
        print(f"vLLM start (d): {results['vllm_load_seconds']:.1f} s")
    if results["run_vllm_vs_vllm_generation"] is not None:
        print(f"run --engine vllm generates at {results['run_vllm_vs_vllm_generation']:.3f}x vLLM's own LLM.generate")
    if results["speedup_vs_pipeline"] is not None:
        print(f"speedup_vs_naive {results['speedup_vs_naive']:.2f}, speedup_vs_pipeline {results['speedup_vs_pipeline']:.2f}; "
              f"(c) at {results['adpulse_ceiling_fraction']:.1%} of the ceiling counting each row's whole prompt, "
              f"{results['adpulse_executed_ceiling_fraction']:.1%} counting the work it executes")


if __name__ == "__main__":
    sys.exit(main())
