#!/usr/bin/env bash
# The GPU check, one run that fits in about 8 minutes on one H100 or H200:
#   - bf16 MFU of BERT-base MLM at seq 512 and GPT-2-small CLM at seq 1024, and cuDNN flash
#     attention against XLA's in time and largest difference (benchmarks/mfu.py);
#   - the PEFT/full train-step time and memory ratios of benchmarks/strategies.py.
# `--quick` runs tiny versions of both on any machine (the test suite's smoke run); a
# `--tokenizer=SPM_MODEL` is passed on to strategies.py (else it trains and caches one).
#
#   bash benchmarks/device_check.sh 2>&1 | tee device_check.txt   # on the GPU machine
#   bash benchmarks/device_check.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
tokenizer=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick="--quick" ;;
    --tokenizer=*) tokenizer=("$arg") ;;
    *) echo "device_check.sh: unknown argument $arg (--quick, --tokenizer=PATH)" >&2; exit 2 ;;
  esac
done

python benchmarks/mfu.py $quick
if [ -n "$quick" ]; then
  python benchmarks/strategies.py --quick \
      --strategies=full,lora:rank=4:targets=all_linear,gradual_unfreeze --batch_size=8 \
      --seq_len=32 "${tokenizer[@]}"
else
  python benchmarks/strategies.py --batch_size=64 --seq_len=128 \
      --strategies=full,frozen,lora,adapters,bitfit,prefix_tuning,prompt_tuning "${tokenizer[@]}"
fi
