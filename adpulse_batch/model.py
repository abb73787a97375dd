"""Finding and loading the base model, its tokenizer and the LoRA adapter.

Names are directories or Hugging Face Hub ids. Hub files go through the Hugging Face cache
(HF_HOME), so with HF_HUB_OFFLINE=1 a model downloaded once keeps working offline. The
adapter is merged into the base weights: merged LoRA runs at the base model's speed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adpulse_batch.errors import ModelNotFoundError, SettingsError, first_line
from adpulse_batch.families import Family, family_of
from adpulse_batch.prompts import ADAPTER_METADATA, Template, adapter_template
from adpulse_batch.settings import ModelSettings

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelIdentity:
    """What writes the ads: the names as given, and what pins their content — the Hub
    commit of a Hub id, or `sha256:...` of a directory's files (None when unknown)."""

    model: str
    model_revision: str | None
    adapter: str | None
    adapter_revision: str | None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype


def model_identity(settings: ModelSettings, *, digest: Callable[[Path], str]) -> ModelIdentity:
    """The identity of the configured model and adapter, without loading them. `digest`
    hashes a file (the ad cache remembers digests, so big models are hashed once)."""
    base = base_model_name(settings)
    adapter = settings.adapter
    return ModelIdentity(
        model=base,
        model_revision=_revision(base, "config.json", digest),
        adapter=adapter,
        adapter_revision=_revision(adapter, "adapter_config.json", digest) if adapter is not None else None,
    )


def _revision(name: str, marker: str, digest: Callable[[Path], str]) -> str | None:
    if is_local(name):
        hasher = hashlib.sha256()
        for path in sorted(Path(name).expanduser().iterdir()):
            if path.is_file() and not path.name.startswith("."):
                hasher.update(f"{path.name}\0{digest(path)}\0".encode())
        return "sha256:" + hasher.hexdigest()
    path = _hub_file(name, marker)  # the Hub cache keeps files under snapshots/<commit>/, also when offline
    return path.parent.name if path is not None and path.parent.parent.name == "snapshots" else None


def resolve_device(name: str, index: int | None = None) -> torch.device:
    """`auto` is the GPU when PyTorch sees one; `index` picks one GPU of several."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"--device cuda: PyTorch sees no CUDA GPU here (torch {torch.__version__}); use --device cpu")
        return torch.device("cuda", index if index is not None else torch.cuda.current_device())
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`--dtype`; `auto`: bfloat16 on GPUs that have it (else float16), and on CPUs that
    compute in it natively; float32 on other CPUs, where bfloat16 is emulated and slower."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if native_bf16() else torch.float32


# CPU features with bfloat16 arithmetic: AVX512-BF16 (bf16 dot products; Cooper Lake, Zen 4
# and later) and AMX (bf16 matrix tiles; Sapphire Rapids and later).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (Linux: read from /proc/cpuinfo; elsewhere
    no, so float32 stays the default there)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return not set(BF16_CPU_FLAGS).isdisjoint(line.split(":", 1)[1].split())
    except OSError:
        pass
    return False


def is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def base_model_name(settings: ModelSettings) -> str:
    """`--model` when given, else the base model the adapter's adapter_config.json records."""
    if settings.model is not None:
        return settings.model
    base = _adapter_config(settings.adapter).get("base_model_name_or_path")
    if not base:
        raise SettingsError(f"adapter {settings.adapter!r} does not record its base model; name it with --model")
    return base


def tokenizer_source(settings: ModelSettings) -> str:
    """Where the tokenizer comes from: the adapter's directory when it has one (finetune saves
    it), else the base model."""
    return settings.adapter if _has_tokenizer(settings.adapter) else base_model_name(settings)


def load_tokenizer(settings: ModelSettings):
    """The tokenizer of `tokenizer_source`. Padding goes on the left, as batched generation needs."""
    from transformers import AutoTokenizer

    source = tokenizer_source(settings)
    tokenizer = _from_hub_or_dir(AutoTokenizer.from_pretrained, source, "adapter" if source == settings.adapter else "base model")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_template(settings: ModelSettings, template_file: Path | None, chat: bool | None = None) -> Template:
    """`--template FILE`, else the adapter's own template, else the default; rendered as
    chat when `chat` says so, else as the adapter was trained (plain by default). A chat
    template needs a tokenizer that has one."""
    own = None
    if settings.adapter is not None:
        _adapter_config(settings.adapter)  # a missing adapter fails here, with its own message
        own = _adapter_template(settings.adapter)
    text = Template.from_file(template_file).text if template_file is not None else own.text if own is not None else Template().text
    chat = chat if chat is not None else own is not None and own.chat
    if chat and not has_chat_template(settings):
        source = tokenizer_source(settings)
        raise SettingsError(
            f"--chat: the tokenizer of {source!r} has no chat template; drop --chat to use the plain template, "
            "or use an instruct model"
        )
    return Template(text, chat=chat)


def load_model(settings: ModelSettings, *, device: torch.device | None = None, tokenizer=None) -> LoadedModel:
    """Load the base model in the chosen dtype on `device`, apply and merge the adapter."""
    device = device or resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    base = base_model_name(settings)
    check_model(settings)
    log.info("loading %s (%s) on %s", base, str(dtype).removeprefix("torch."), device)
    model = load_base_model(base, dtype=dtype, device_map=str(device))
    if settings.adapter is not None:
        model = _merge_adapter(model, settings.adapter, base)
    model.eval()
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(settings)
    return LoadedModel(model, tokenizer, device, dtype)


def load_base_config(base: str):
    """The base model's config (transformers' object), checked to be of a family run generates with."""
    from transformers import AutoConfig

    family_of(_json_file(base, "config.json", "base model"), base)
    return _from_hub_or_dir(AutoConfig.from_pretrained, base, "base model")


def check_model(settings: ModelSettings) -> None:
    """Fail before any work (and without loading weights, transformers or peft) when the
    base model is not of a family run can generate with, the adapter is not a LoRA adapter,
    or the tokenizer's files are missing."""
    model_family(settings)
    if not _has_tokenizer(settings.adapter):
        _json_file(base_model_name(settings), "tokenizer_config.json", "base model")
    if settings.adapter is not None:
        kind = _adapter_config(settings.adapter).get("peft_type")
        if kind != "LORA":
            raise SettingsError(f"--adapter {settings.adapter!r} is a {kind} adapter; adpulse-batch applies LoRA adapters")


def base_config(settings: ModelSettings) -> dict:
    """The base model's config.json, read as JSON."""
    return _json_file(base_model_name(settings), "config.json", "base model")


def model_family(settings: ModelSettings) -> Family:
    """The family of the base model, or a one-line refusal when run cannot generate with it."""
    return family_of(base_config(settings), base_model_name(settings))


def check_fits(settings: ModelSettings, *, max_prompt_tokens: int, max_new_tokens: int) -> None:
    """Fail when a prompt and its new tokens can exceed what the base model attends to: its
    position limit, or a sliding attention window (our attention attends to every slot, so a
    sequence must fit the window). BLOOM's ALiBi has neither."""
    config = base_config(settings)
    limits = []
    if config.get("max_position_embeddings"):
        limits.append((config["max_position_embeddings"], "position limit"))
    if config.get("sliding_window") and config.get("use_sliding_window", True):
        limits.append((config["sliding_window"], "sliding attention window"))
    if limits and max_prompt_tokens + max_new_tokens > min(limits)[0]:
        limit, what = min(limits)
        raise SettingsError(
            f"--max-prompt-tokens {max_prompt_tokens} plus --max-new-tokens {max_new_tokens} "
            f"exceed the {limit} tokens the model attends to (its {what}); lower them"
        )


def stop_ids(settings: ModelSettings, tokenizer) -> frozenset[int]:
    """Every end-of-text id of the model: the tokenizer's, and those its config and
    generation_config.json list (Llama 3 has two, instruct models one per turn end)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    base = base_model_name(settings)
    for config in (base_config(settings), _optional_json(base, "generation_config.json")):
        found = config.get("eos_token_id")
        ids.update(found if isinstance(found, list) else [found] if found is not None else [])
    return frozenset(ids)


def has_chat_template(settings: ModelSettings) -> bool:
    """Whether the tokenizer run uses (the adapter's, else the base model's) has a chat
    template: in tokenizer_config.json, or beside it as chat_template.jinja (transformers 5)."""
    source = tokenizer_source(settings)
    if _json_file(source, "tokenizer_config.json", "adapter" if source == settings.adapter else "base model").get("chat_template"):
        return True
    if is_local(source):
        return (Path(source).expanduser() / "chat_template.jinja").is_file()
    return _hub_file(source, "chat_template.jinja") is not None


def load_base_model(base: str, **kwargs):
    """The base model's weights; `kwargs` go to `from_pretrained` (dtype, device_map, quantization_config)."""
    from transformers import AutoModelForCausalLM

    return _from_hub_or_dir(AutoModelForCausalLM.from_pretrained, base, "base model", **kwargs)


def _merge_adapter(model, adapter: str, base: str):
    from peft import PeftModel

    log.info("applying adapter %s", adapter)
    try:
        peft_model = _from_hub_or_dir(lambda name: PeftModel.from_pretrained(model, name), adapter, "adapter")
    except RuntimeError as error:  # weights of the wrong shape: trained on another base
        raise SettingsError(
            f"--adapter {adapter!r} does not fit the base model {base!r} ({str(error).splitlines()[0][:160]}); "
            "pass the base model it was trained on with --model"
        ) from None
    return peft_model.merge_and_unload()


def _adapter_config(adapter: str) -> dict:
    return _json_file(adapter, "adapter_config.json", "adapter")


@functools.lru_cache(maxsize=8)
def _json_file(name: str, file: str, what: str) -> dict:
    """A config file of a model or adapter directory or Hub repo. Read as JSON, not through
    transformers or peft: importing them takes seconds, and a run whose ads all come from
    the cache needs neither."""

    def read(name: str) -> dict:  # OSError and ValueError (bad JSON) become one line
        if is_local(name):
            path = Path(name) / file
            if not path.is_file():
                raise OSError(f"it has no {file} (is it a {'PEFT adapter' if what == 'adapter' else 'model'} directory?)")
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(name, file))
        return json.loads(path.read_text(encoding="utf-8"))

    return _from_hub_or_dir(read, name, what)


def _optional_json(name: str, file: str) -> dict:
    """A JSON file a model may have (generation_config.json); {} when it has none."""
    if is_local(name):
        path = Path(name).expanduser() / file
        path = path if path.is_file() else None
    else:
        path = _hub_file(name, file)
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
    except (OSError, ValueError):
        return {}


def _hub_file(name: str, file: str) -> Path | None:
    """A file of a Hub repo through the Hugging Face cache; None when absent or unreachable."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(name, file))
    except Exception:  # absent from the repo, or not cached while offline
        return None


def _adapter_template(adapter: str) -> Template | None:
    if is_local(adapter):
        return adapter_template(Path(adapter).expanduser())
    # A Hub adapter written by finetune carries the same file; the original one does not.
    path = _hub_file(adapter, ADAPTER_METADATA)
    return adapter_template(path.parent) if path is not None else None


def _has_tokenizer(adapter: str | None) -> bool:
    return adapter is not None and is_local(adapter) and (Path(adapter).expanduser() / "tokenizer_config.json").is_file()


def _from_hub_or_dir(load, name: str, what: str, **kwargs):
    """Call a from_pretrained-style `load` on a directory or Hub id; failure becomes one
    line that names the flag and says how to point at a local copy."""
    flag = "--adapter" if what == "adapter" else "--model"
    if is_local(name):
        try:
            return load(str(Path(name).expanduser()), **kwargs)
        except (OSError, ValueError) as error:
            raise ModelNotFoundError(f"cannot load the {what} from {name}: {first_line(error)}; check {flag}") from None
    if not _looks_like_hub_id(name):
        raise ModelNotFoundError(f"cannot find the {what} {name}: no such directory; check {flag}")
    try:
        return load(name, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(
            f"cannot load the {what} {name!r}: it is not a local directory and the Hugging Face Hub did not provide it "
            f"({first_line(error)}); download it once where the Hub is reachable (`hf download {name} --local-dir DIR`) "
            f"and pass {flag} DIR"
        ) from None


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and not name.startswith((".", "~", "/"))
