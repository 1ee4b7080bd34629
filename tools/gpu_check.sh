#!/usr/bin/env bash
# GPU check for the device machine (a lent CUDA box with its own torch): the whole test suite
# with device=auto picking CUDA (compare, exact resume after kill -9, ...), then a digits
# comparison on CUDA (auto: stacked seeds), the stacked-runs benchmark and a --stack off
# comparison. Usage there: bash tools/gpu_check.sh   (writes into $OUT when set)
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -p no:cacheprovider tests selfnorm 2>&1 | tail -25 | tee "$OUT/pytest.txt"
python3 -m selfnorm compare --device cuda --epochs 10 --out "$OUT/digits" --quiet | tee "$OUT/compare.txt"
cp "$OUT/digits/summary.json" "$OUT/summary.json" 2>/dev/null
rm -rf "$OUT/digits"
# issue 12: stacked vs one-at-a-time runs on the GPU (auto stacks there; measure it), and the
# stacked compare's numbers beside the sequential ones
MNIST=$(ls -d shared/data/mnist ../shared/data/mnist 2>/dev/null | head -1)
python3 bench/stacked_runs.py --device cuda --rounds 3 ${MNIST:+--data-dir "$MNIST"} --json 2>&1 | tail -8 | tee "$OUT/stacked_runs.txt"
python3 -m selfnorm compare --device cuda --epochs 10 --stack off --out "$OUT/digits-off" --quiet | tee "$OUT/compare-off.txt"
rm -rf "$OUT/digits-off"
