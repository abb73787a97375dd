"""The command-line options the Spark and Ray Data job scripts of jobs/ share: the catalog
in and out, the model, and how the ads are generated."""

from __future__ import annotations

import argparse
import os

from adpulse_batch.catalog import CHUNK_ROWS
from adpulse_batch.settings import DEFAULT_ADAPTER, DEVICES, DTYPES, NO_COLUMN, GenerationSettings, ModelSettings


def job_parser(description: str) -> argparse.ArgumentParser:
    """A parser with INPUT, OUTPUT, --model, --adapter, --device, --dtype, --max-new-tokens, --batch-size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("input", help="the catalog: a Parquet file or directory")
    parser.add_argument("output", help="where to write the Parquet output (a directory)")
    parser.add_argument("--model", help="base model (directory or Hub id); default: the adapter's base")
    parser.add_argument("--adapter", default=DEFAULT_ADAPTER, help="LoRA adapter (directory or Hub id), or none")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the model runs")
    parser.add_argument(
        "--dtype", default=os.environ.get("ADPULSE_DTYPE", "auto"), choices=DTYPES, help="precision, as run's --dtype (env ADPULSE_DTYPE)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="most tokens per ad")
    parser.add_argument("--batch-size", type=int, default=CHUNK_ROWS, help="rows planned and generated together")
    return parser


def job_settings(args: argparse.Namespace) -> tuple[ModelSettings, GenerationSettings]:
    adapter = None if args.adapter.lower() == NO_COLUMN else args.adapter
    return ModelSettings(model=args.model, adapter=adapter, device=args.device, dtype=args.dtype), GenerationSettings(max_new_tokens=args.max_new_tokens)
