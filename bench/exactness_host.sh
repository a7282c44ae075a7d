#!/usr/bin/env bash
# The exactness table on a GPU host (bench/exactness.py): executor on one card, validator on another.
#
#   bench/exactness_host.sh a14b      OUT   # wan-a14b-shape executor: 3 requests per configuration
#   bench/exactness_host.sh small     OUT   # shipped model executor: 50 requests per configuration
#   bench/exactness_host.sh validate  OUT   # validator: unpacks OUT-like packs from $PACKS, validates
#
# Packages: diffusers, PyAV, pydantic unpacked from $CARRY/site.tar.xz and the fa3-fwd build from
# $CARRY/fa3.tar.xz (default CARRY=.carry) into /tmp/site. The executor packs records without
# videos (the validator regenerates and compares hashes) into OUT/<store>.tgz.partNN.
set -euo pipefail
mode=${1:?a14b, small or validate}
out=${2:?output folder}
carry=${CARRY:-$PWD/.carry}
mkdir -p /tmp/site "$out"
for archive in "$carry"/site.tar.xz "$carry"/fa3.tar.xz; do
    [ -f "$archive" ] && tar xJf "$archive" -C /tmp/site
done
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
fresh_cache() { TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) "$@"; }
ex() { fresh_cache python3 bench/exactness.py "$@"; }

case $mode in
a14b)
    python3 bench/yuv_speed.py --out "$out/yuv_speed.json" || true
    timeout "${BUDGET:-480}" bash -c "$(declare -f fresh_cache ex); ex generate --preset wan-a14b-shape --device cuda --prompts ${PROMPTS:-3} --steps 3 \
        --width 832 --height 480 --frames ${FRAMES:-17} --store /tmp/exact-a14b \
        --configs ${CONFIGS:-sdpa-cudnn,sdpa-flash,sdpa-efficient,cfg-batched,compiled,flash-attn-3,kept,ffn-chunks-4}" || true
    ex table --store /tmp/exact-a14b --out "$out/executor-a14b.json" || true
    ex pack --store /tmp/exact-a14b --no-videos --out "$out/exact-a14b.tgz"
    ;;
small)
    timeout "${BUDGET:-480}" bash -c "$(declare -f fresh_cache ex); ex generate --preset wan-shapes-small \
        --device cuda --prompts ${PROMPTS:-50} --steps 20 --width 128 --height 128 --frames 17 \
        --store /tmp/exact-small ${CONFIGS:+--configs $CONFIGS}" || true
    ex table --store /tmp/exact-small --out "$out/executor-small.json" || true
    ex pack --store /tmp/exact-small --no-videos --out "$out/exact-small.tgz"
    ;;
validate)
    for store in ${STORES:-a14b small}; do
        [ -e "${PACKS:?folder of packs}/exact-$store.tgz.part00" ] || continue
        ex unpack "$PACKS/exact-$store.tgz" --store "/tmp/exact-$store"
        timeout "${BUDGET:-480}" bash -c "$(declare -f fresh_cache ex); ex validate --store /tmp/exact-$store --device cuda" || true
        ex table --store "/tmp/exact-$store" --out "$out/table-$store.json" || true
        ex pack --store "/tmp/exact-$store" --no-videos --out "$out/validated-$store.tgz"
    done
    ;;
*)
    echo "unknown mode $mode; allowed: a14b, small, validate" >&2
    exit 2
    ;;
esac
