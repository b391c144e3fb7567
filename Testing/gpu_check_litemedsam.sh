#!/usr/bin/env bash
# LiteMedSAM on a CUDA GPU (issue 17, part 4): the GPU tests, then the bench lines whose output goes into
# docs/BENCHMARKS.md. Run alone or from Testing/gpu_check.sh. A missing GPU fails (SAMADAPT3D_GPU_TESTS=1).
set -euo pipefail
cd "$(dirname "$0")/../SAMAdapt3DLib"
export SAMADAPT3D_GPU_TESTS=1
export SAMADAPT3D_CACHE_DIR="${SAMADAPT3D_CACHE_DIR:-$(mktemp -d)}"
python -m pytest -q -p no:cacheprovider tests/test_litemedsam_speed.py -k cuda
# per slice: exact fp32, bf16 autocast, torch.compile; one slice per call and batches of 16 (goal: <= 3 ms/slice on an H200)
python -m samadapt3d bench --model litemedsam --device cuda --candidates torch-fp32,torch-bf16,torch-compile --slices 4 --repeats 5
python -m samadapt3d bench --model litemedsam --device cuda --candidates torch-fp32,torch-bf16 --slices 4 --repeats 5 --batch 16
# a 512x512x300 session: first click with the outward prefetch, whole CT, warm click, disk-cache restart, peak memory
python -m samadapt3d bench --model litemedsam --device cuda --session 300 --precision auto
# the masks of every demo structure with bf16 against fp32 (Dice to fp32 must stay >= 0.99)
python -m samadapt3d bench --model litemedsam --device cuda --parity --precisions auto
