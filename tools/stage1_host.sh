#!/usr/bin/env bash
# One host's part of a Stage 1 run whose store cannot be shared (a lent GPU host that sends back
# at most a few files): plan, run the selected configurations, score, re-run segments, and pack what the merge needs.
#
#   [STORE=DIR] [SIDE_BY_SIDE=N] [SHARD=I/N] [SEGMENTS=N|spread:N|all] [DEADLINE=S] [MPS=1] tools/stage1_host.sh CONFIG CONFIGURATIONS OUT [WORKERS_PER_GPU] [RUN_SECONDS] [PACK]
#
# CONFIGURATIONS: comma-separated, or "all"; PACK: which jobs' videos and final latents (besides
# the thin store) go into OUT/parts/ as 15 MB parts: "references", "all" or "none" (with the
# shipped model a job packs to about 0.3 MB: its final latent file holds the solver state too).
# Outputs: OUT/thin.tgz (plan, results, records, scores, manifest: no videos or latents),
# OUT/parts/artifacts.tgz.part-*, OUT/run.log. Locally:
#   mkdir host && tar xzf thin.tgz -C host && cat parts/artifacts.tgz.part-* | tar xzf - -C host
#   ditproof experiment merge --store merged host other_host ...; ditproof experiment score --store merged
set -euo pipefail
config=$1 configurations=$2 out=$3 per_gpu=${4:-1} seconds=${5:-540} pack=${6:-references}
# One store per shard by default: calls for several shards on one warm host then send back each
# shard's own thin store, not a growing one.
shard_tag=${SHARD:+-shard-${SHARD%/*}-of-${SHARD#*/}}
store=${STORE:-/tmp/stage1-store$shard_tag}
ditproof=(python3 -m ditproof.cli.main experiment)  # `ditproof experiment` from the source tree (docs/gpu.md)
"${ditproof[@]}" plan "$config" --store "$store"
# MPS=1: the runners' processes share the GPU through NVIDIA's Multi-Process Service, so that their
# kernels run side by side instead of in time slices (small models leave a GPU mostly idle; the
# kernels, and so the bytes, are the same). Skipped, saying why, where the daemon is missing or a
# CUDA context cannot be made through it.
mps_started=
: > "$out/run.log"
if [ "${MPS:-0}" = 1 ]; then
  if command -v nvidia-cuda-mps-control > /dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/ditproof-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/ditproof-mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d && python3 -c 'import torch; torch.ones(1, device="cuda").sum().item()'; then
      mps_started=1 && echo "MPS: on" | tee -a "$out/run.log"
    else
      echo quit | nvidia-cuda-mps-control 2> /dev/null || true
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
      echo "MPS: off (no CUDA context through the daemon)" | tee -a "$out/run.log"
    fi
  else
    echo "MPS: off (nvidia-cuda-mps-control is not installed)" | tee -a "$out/run.log"
  fi
fi
select=()
[ "$configurations" != all ] && select=(--configurations "$configurations")
started=$(date +%s)
# SIDE_BY_SIDE=N: N runners at once, one per prompt shard, sharing the GPUs (small models leave a GPU
# mostly idle; four tp4 launches on four GPUs then take about the time of one).
# SHARD=I/N: only the jobs of prompt shard I of N (one of several calls whose packed artifacts
# must each fit a host's return limit, or whose jobs must each fit a call's time).
# Both: SHARD=I/N split again into SIDE_BY_SIDE runners (shards I+N*j of N*SIDE_BY_SIDE: a prompt's
# shard modulo N is I, so they hold exactly shard I's prompts).
side=${SIDE_BY_SIDE:-1}
part=${SHARD:-0/1}
for i in $(seq 0 $(( side - 1 ))); do
  shard=()
  if [ "$side" -gt 1 ] || [ -n "${SHARD:-}" ]; then
    shard=(--shard "$(( ${part%/*} + ${part#*/} * i ))/$(( ${part#*/} * side ))")
  fi
  ( timeout "$seconds" "${ditproof[@]}" run --store "$store" --workers-per-gpu "$per_gpu" \
      "${select[@]}" "${shard[@]}" > "$out/run.$i.log" 2>&1 \
    || echo "runner $i stopped: exit $? after $(( $(date +%s) - started )) s" ) &
done
wait
cat "$out"/run.*.log >> "$out/run.log" && rm "$out"/run.*.log
echo "runners took $(( $(date +%s) - started )) s"
grep -E "^(run |  skipped |failed)|(failed|gave-up) " "$out/run.log" | tail -n 25 || true
# DEADLINE=S: the steps after the runners (the score and the segment re-runs, side by side) end
# within S seconds of the start, so that a call of a fixed length always packs what it did.
left() { if [ -n "${DEADLINE:-}" ]; then echo $(( DEADLINE - ($(date +%s) - started) - ${1:-0} )); else echo 100000; fi; }
limit() { local l; l=$(left "$2"); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }
device=$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
logs=$(mktemp -d)
# The scores of the finished pairs (they need the videos and latents, which stay on this host): in
# the background, beside the segment re-runs (scores.parquet and segments-*.parquet are apart).
# SCORE_WORKERS processes score side by side (default: half the runners' workers, at least one).
score_workers=${SCORE_WORKERS:-$(( side * per_gpu / 2 > 1 ? side * per_gpu / 2 : 1 ))}
( timeout "$(limit "${SCORE_SECONDS:-900}" 30)" "${ditproof[@]}" score --store "$store" --device "$device" \
    --workers "$score_workers" > "$logs/score.log" 2>&1 || echo "score stopped: exit $?" >> "$logs/score.log" ) &
# SEGMENTS=N: the checkpoints-mode evidence (`experiment segments`) for the jobs of the first N
# prompts ("all": every prompt; "spread:N": N prompts spread evenly over the plan, as configurations
# with prompt_selection = "spread"), as SEGMENT_PROCESSES job shards (default: all the runners'
# workers) within SEGMENT_SECONDS.
processes=0
if [ -n "${SEGMENTS:-}" ]; then
  segment_limit=()
  case "$SEGMENTS" in
    all) ;;
    spread:*) segment_limit=(--max-prompts "${SEGMENTS#spread:}" --spread) ;;
    *) segment_limit=(--max-prompts "$SEGMENTS") ;;
  esac
  processes=${SEGMENT_PROCESSES:-$(( side * per_gpu ))}
  seconds_left=$(limit "${SEGMENT_SECONDS:-300}" 30)
  for i in $(seq 0 $(( processes - 1 ))); do
    ( timeout "$seconds_left" "${ditproof[@]}" segments --store "$store" --device "$device" \
        "${segment_limit[@]}" --shard "$i/$processes" > "$logs/segments.$i.log" 2>&1 \
      || echo "segments $i stopped: exit $?" >> "$logs/segments.$i.log" ) &
  done
fi
wait
# Their last lines go into run.log (the host sends back few files).
{ tail -n 5 "$logs/score.log"; for i in $(seq 0 $(( processes - 1 ))); do tail -n 2 "$logs/segments.$i.log"; done; } \
  | tee -a "$out/run.log"
rm -rf "$logs"
[ -n "$mps_started" ] && { echo quit | nvidia-cuda-mps-control || true; }
tar czf "$out/thin.tgz" --exclude='*.mp4' --exclude='*.safetensors' -C "$store" .
if [ "$pack" != none ]; then
  python3 - "$store" "$pack" > /tmp/pack-list <<'PY'
import sys
from ditproof.experiment.jobs import load_plan, read_result
from ditproof.experiment.store import Store
store = Store(sys.argv[1])
for job in load_plan(store):
    result = read_result(store, job.job_id)
    if result is None or (sys.argv[2] == "references" and not job.is_reference):
        continue
    for artifact in result.artifacts:
        if artifact.name in ("video", "latent:final"):
            print(artifact.path)
PY
  mkdir -p "$out/parts"
  tar cf - -C "$store" -T /tmp/pack-list | gzip -6 | split -b 15M - "$out/parts/artifacts.tgz.part-"
fi
ls -la "$out" "$out/parts" 2>/dev/null || true
