"""vLLM with an adapter as a LoRARequest against the same adapter merged into the weights,
side by side on the same prompts: what decides `--vllm-lora auto`.

    python benchmarks/vllm_adapters.py                 # Llama CPU preset, 128 rows, 32 new tokens
    python benchmarks/vllm_adapters.py --device cuda   # on a GPU

Both engines run in this process (vLLM started twice, once for each), then take turns over
--rounds rounds of every row; medians of rows/s are printed, with the greedy tokens each
wrote (a LoRA applied unmerged rounds differently, so a near-tie can go either way).
"""

from __future__ import annotations

import adpulse_batch  # noqa: F401  (sets MKL's reproducible mode before torch loads)

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as T  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(T.PRESETS), default="llama")
    parser.add_argument("--preset", choices=("micro", "cpu", "full"), default="cpu")
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)

    from vllm import LLM
    from vllm.lora.request import LoRARequest

    from adpulse_batch.model import load_model, stop_ids
    from adpulse_batch.prompts import PromptBuilder, Template
    from adpulse_batch.settings import ModelSettings

    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    work = Path(tempfile.mkdtemp(prefix="adpulse-vllm-adapters-"))
    tokenizer = T.train_tokenizer(0, bos=args.arch == "llama")
    model_dir, adapter_dir = T.build_model(work, tokenizer, args.arch, dict(T.PRESETS[args.arch][args.preset]), device=torch.device("cpu"), dtype=dtype, seed=0)
    settings = ModelSettings(model=str(model_dir), adapter=str(adapter_dir), device="cpu", dtype="float32")
    merged = load_model(settings, tokenizer=tokenizer)
    merged.model.save_pretrained(work / "merged")
    tokenizer.save_pretrained(work / "merged")
    builder = PromptBuilder(Template(), tokenizer, 256)
    prompt_ids = builder.encode_many([builder.text(p, d) for p, d in T.synthetic_catalog(args.rows, 0)])
    stops = sorted(stop_ids(settings, tokenizer))
    common = dict(dtype=str(dtype).removeprefix("torch."), seed=0, enable_prefix_caching=True, max_model_len=256 + args.new_tokens)

    engines = {}
    started = time.perf_counter()
    engines["LoRARequest"] = (LLM(model=str(model_dir), enable_lora=True, max_lora_rank=16, **common), LoRARequest("adapter", 1, str(adapter_dir)))
    T.log(f"vLLM with LoRA started in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    engines["merged"] = (LLM(model=str(work / "merged"), **common), None)
    T.log(f"vLLM on the merged model started in {time.perf_counter() - started:.1f} s")
    speed = {name: [] for name in engines}
    tokens = {}
    for llm, lora in engines.values():  # warm-up
        T.vllm_tokens(llm, lora, prompt_ids[:8], args.new_tokens, stops)
    for round_ in range(args.rounds):
        for name, (llm, lora) in engines.items():
            started = time.perf_counter()
            tokens[name] = T.vllm_tokens(llm, lora, prompt_ids, args.new_tokens, stops)
            speed[name].append(args.rows / (time.perf_counter() - started))
            T.log(f"round {round_ + 1} {name}: {speed[name][-1]:.2f} rows/s")
    for llm, _ in engines.values():
        llm.llm_engine.engine_core.shutdown()
    same = sum(a == b for a, b in zip(tokens["LoRARequest"], tokens["merged"]))
    print(f"{T._cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name()} [{' '.join(T.cpu_flags())}]  {args.arch} {args.preset}, "
          f"{args.rows} rows, {args.new_tokens} new tokens, {dtype}, median of {args.rounds}")
    for name in engines:
        print(f"vLLM, adapter {name:12} {statistics.median(speed[name]):8.2f} rows/s")
    print(f"merged / LoRARequest: x{statistics.median(speed['merged']) / statistics.median(speed['LoRARequest']):.2f}; same greedy tokens: {same}/{args.rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
