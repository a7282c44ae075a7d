#!/usr/bin/env bash
# Performance benches on one GPU host: the attention kernels alone, forward passes, whole generations.
#
#   bench/perf_host.sh kernels  OUT   # bench/fa4_check.py, run twice (two processes)
#   bench/perf_host.sh fused    OUT   # bench/fused_check.py: fuse_elementwise's kernels, cuDNN cross-attention
#   bench/perf_host.sh forward  OUT   # bench/perf_forward.py: 480p and 720p, profiles, two processes
#   bench/perf_host.sh gemm     OUT   # bench/gemm_check.py: the block's matrix products, their kernels
#   bench/perf_host.sh algos    OUT   # bench/cublaslt_algos.py: cuBLASLt's candidates, the residual epilogue
#   bench/perf_host.sh gaps     OUT   # bench/generation_gaps.py: forwards inside a generation vs back to back
#   bench/perf_host.sh pipeline OUT   # bench/perf_pipeline.py: defaults vs best, the side-by-side table
#
# Packages: the wheels of diffusers and its needs unpacked under SITE (default .fa4site/lite or
# /tmp/site), and flash-attn-4 with the CUTLASS DSL unpacked under FA4 (default .fa4site), both
# optional for `kernels` and `forward` (flash-attn-4 rows then record why they did not run); a
# FlashAttention-3 build (e.g. the fa3-fwd wheel unzipped) under FA3 (default .fa3site), optional.
# Each process gets its own empty Inductor cache: an executor and a validator compile apart.
set -euo pipefail
mode=${1:?kernels, fused, gemm, algos, gaps, forward or pipeline}
out=${2:?output folder}
fa4=${FA4:-$PWD/.fa4site}
fa3=${FA3:-$PWD/.fa3site}
site=${SITE:-$fa4/lite}
export PYTHONPATH="$site:$fa4:$fa4/nvidia_cutlass_dsl/dsl_packages:$fa3:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$out"
fresh_cache() { TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) "$@"; }

case $mode in
kernels)
    fresh_cache python3 bench/fa4_check.py --out "$out/kernels_a.json"
    fresh_cache python3 bench/fa4_check.py --out "$out/kernels_b.json" --shapes 480p-self --repeats 2
    ;;
fused)
    fresh_cache python3 bench/fused_check.py --out "$out/fused_check.json"
    ;;
gemm)
    fresh_cache python3 bench/gemm_check.py --out "$out/gemm_check.json"
    ;;
algos)
    fresh_cache python3 bench/cublaslt_algos.py --out "$out/cublaslt_algos.json" ${PRODUCTS:+--products "$PRODUCTS"}
    ;;
gaps)
    fresh_cache python3 bench/generation_gaps.py --out "$out/generation_gaps.json" --best-attention "${BEST_ATTENTION:-flash-attn-3}"
    ;;
forward)
    # flash-attn-4-all: session 4's kept kernel (FlashAttention-4 for the cross-attention too).
    kept=flash-attn-4+fused+ew+compile+det
    variants=${VARIANTS:-flash-attn-4-all+fused+compile+det,flash-attn-4+fused+compile+det,$kept}
    fresh_cache python3 bench/perf_forward.py --out "$out/forward_480p.json" --layers "${LAYERS:-10}" \
        --repeats 3 --sizes 480p --variants "$variants" --profile "${PROFILE:-$kept}"
    # A second process: the kept variants must give the same output bytes as in the first.
    fresh_cache python3 bench/perf_forward.py --out "$out/forward_480p_b.json" --layers "${LAYERS:-10}" \
        --repeats 1 --sizes 480p --variants "${KEPT:-$kept}"
    fresh_cache python3 bench/perf_forward.py --out "$out/forward_720p.json" --layers "${LAYERS:-10}" --repeats 2 \
        --sizes 720p --variants "${VARIANTS_720P:-flash-attn-4-all+fused+compile+det,$kept}"
    ;;
pipeline)
    fresh_cache python3 bench/perf_pipeline.py --out "$out/perf_pipeline.json" \
        --best-attention "${BEST_ATTENTION:-sdpa-cudnn}" --pause "${PAUSE:-40}" ${RUNS:+--runs "$RUNS"}
    ;;
*)
    echo "mode: got $mode; allowed: kernels, fused, gemm, algos, gaps, forward, pipeline" >&2
    exit 2
    ;;
esac
