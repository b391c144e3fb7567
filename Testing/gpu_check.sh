#!/usr/bin/env bash
# GPU check (issue 17, part 4): on a CUDA machine, the GPU tests and the bench lines for docs/BENCHMARKS.md:
# 3DSAM-adapter full 128³ crop and cached click (fp32, bf16 autocast, bf16 + torch.compile), LiteMedSAM per
# slice and a 512x512x300 session (Testing/gpu_check_litemedsam.sh), peak memory. Writes every output and a
# summary to $GPU_CHECK_OUT (default: gpu_check_results/ in the repository root).
#   GPU_CHECK_DRY_RUN=1  the same steps on the CPU with the small network (tests the script, not the GPU);
#                        the LiteMedSAM part is only listed then.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${GPU_CHECK_OUT:-$ROOT/gpu_check_results}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
cd "$ROOT/SAMAdapt3DLib"

if [[ "${GPU_CHECK_DRY_RUN:-0}" == "1" ]]; then
  DEVICE=cpu; SIZE=(--config small --crop 32 --repeats 1)
else
  DEVICE=cuda; SIZE=(--config full --crop 128 --repeats 5)
  export SAMADAPT3D_GPU_TESTS=1  # a missing GPU fails the tests instead of skipping them
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
fi

{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ) device=$DEVICE dry_run=${GPU_CHECK_DRY_RUN:-0}"
  echo "# torch $(python -c 'import torch; print(torch.__version__, torch.version.cuda)')"
  [[ -f "$OUT/gpu.txt" ]] && echo "# gpu $(cat "$OUT/gpu.txt")"
} > "$SUMMARY"

step() {  # step NAME COMMAND...: run, keep its output, copy its result lines to the summary
  local name="$1"; shift
  echo "== $name: $*" | tee -a "$SUMMARY"
  if "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"; then
    grep -v '^bench:' "$OUT/$name.txt" | tail -n 12 >> "$SUMMARY"
  else
    echo "FAILED (exit $?), see $OUT/$name.err" | tee -a "$SUMMARY"; tail -n 5 "$OUT/$name.err" >> "$SUMMARY"
    return 1
  fi
}

status=0
if [[ "$DEVICE" == "cuda" ]]; then
  step tests_sam3d_gpu python -m pytest -q -p no:cacheprovider tests/test_sam3d_gpu.py || status=1
fi
step sam3d_fp32 python -m samadapt3d bench --device "$DEVICE" "${SIZE[@]}" --precision fp32 || status=1
step sam3d_bf16 python -m samadapt3d bench --device "$DEVICE" "${SIZE[@]}" --precision bf16 || status=1
if [[ "$DEVICE" == "cuda" ]]; then
  step sam3d_bf16_compile python -m samadapt3d bench --device cuda "${SIZE[@]}" --precision bf16 --compile || status=1
  step litemedsam bash "$ROOT/Testing/gpu_check_litemedsam.sh" || status=1
else
  echo "== litemedsam: (dry run: not run) bash $ROOT/Testing/gpu_check_litemedsam.sh" >> "$SUMMARY"
fi
echo "# goals on an H200: 3DSAM-adapter crop <= 60 ms, click <= 20 ms (bf16), LiteMedSAM <= 3 ms per slice" >> "$SUMMARY"
cat "$SUMMARY"
exit $status
