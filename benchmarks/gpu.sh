#!/usr/bin/env bash
# The throughput benchmark on one CUDA GPU, bloom-1b7's and Llama-3.2-1B's real shapes, bfloat16, in one command:
#
#     bash benchmarks/gpu.sh                 # from the repository root or anywhere
#     bash benchmarks/gpu.sh --dry-run       # no GPU: the same script on CPU, micro preset
#
# Needs python with torch (CUDA build), transformers, peft and accelerate; no network, no
# install (the repository is put on PYTHONPATH; pyarrow is used when present, for the `run`
# row of the table). Prints the tables and writes benchmarks/results/throughput-{bloom,llama}-full-cuda.json
# (or $OUT/... when OUT is set). Each model is hard-stopped at 270 s, so the whole script ends
# within 9 minutes: the naive per-row baseline runs on 16 of the 256 rows (every 16th; a row's
# time alone does not depend on the others), everything else on all 256.
# Extra arguments go to throughput.py (e.g. --batch-size 128).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHON=${PYTHON:-python}
OUT=${OUT:-benchmarks/results}

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
    shift
fi

"$PYTHON" - "$dry_run" <<'EOF'
import sys
missing = []
for name in ("torch", "transformers", "peft", "accelerate", "tokenizers"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
if missing:
    sys.exit(f"gpu.sh: missing Python packages: {', '.join(missing)}")
import torch
if sys.argv[1] == "0" and not torch.cuda.is_available():
    sys.exit(f"gpu.sh: PyTorch {torch.__version__} sees no CUDA GPU here (use --dry-run to try the script on CPU)")
if torch.cuda.is_available():
    print(f"gpu.sh: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", file=sys.stderr)
EOF

started=$SECONDS
if [[ $dry_run == 1 ]]; then
    # The GPU commands' code path (bfloat16, a vocabulary larger than the tokenizer's) on CPU, small.
    for arch in bloom llama; do
        "$PYTHON" benchmarks/throughput.py --arch $arch --preset micro --vocab 4096 --device cpu --dtype bfloat16 \
            --rows 16 --naive-rows 4 --new-tokens 4 --repeats 1 --quiet-below 1 --ceiling-seconds 1 \
            --json "$OUT/throughput-$arch-gpu-dry-run.json" "$@"
    done
else
    status=0
    for arch in bloom llama; do
        timeout 270 "$PYTHON" benchmarks/throughput.py --arch $arch --preset full --device cuda --dtype bfloat16 \
            --rows 256 --naive-rows 16 --new-tokens 32 --repeats 3 --quiet-below 1 \
            --json "$OUT/throughput-$arch-full-cuda.json" "$@" || status=$?
    done
    [[ $status == 0 ]] || echo "gpu.sh: a benchmark failed or ran out of time (exit $status)" >&2
fi
echo "gpu.sh: done in $((SECONDS - started)) s" >&2
