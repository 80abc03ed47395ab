#!/usr/bin/env bash
# GPU checks in one short run: the gpu-marked tests, then throughput at 112x112.
#
#   benchmarks/gpu_checks.sh OUT_DIR SHARD_DIR
#   ID3_ABLATION=1 benchmarks/gpu_checks.sh OUT_DIR SHARD_DIR   # + ID3 ablation part 1 at 64x64 bf16 (~20 min)
#   benchmarks/gpu_checks.sh --smoke OUT_DIR   # CPU: every ID3 step of this script on tiny settings (minutes)
#
# SHARD_DIR: a parametric shard dataset for the recognizer runs, e.g.
#   facesynth generate --generator parametric --identities 100 --per-identity 50 --image-format jpeg --out DIR
# Writes OUT_DIR/gpu_checks.log (everything) and OUT_DIR/gpu_checks.json (the figures). Every step has
# its own time limit and a failed step does not stop the others; the exit status is the number of
# failed steps. Figures: ID3 training steps/s and sampling images/s (bf16, base UNet, r50 encoder
# with random weights), recognizer training images/s streaming from shards (r50 + ArcFace, batch
# 128) for each precision and privacy method; for bf16 and fp16 the input path alone, the model alone
# and both, decoding in the loader workers and on the GPU (bench_recognizer_training; decode=device
# needs torchvision built for the installed torch, and is reported as skipped without it; SHARD_DIR
# must hold JPEGs for it); frequency-frontend and Tammes-solver times.
set -u
smoke=0
if [ "${1-}" = "--smoke" ]; then
  smoke=1
  shift
fi
out=${1:?usage: gpu_checks.sh [--smoke] OUT_DIR SHARD_DIR}
data=${2:-}
[ "$smoke" = 1 ] || [ -n "$data" ] || { echo "usage: gpu_checks.sh OUT_DIR SHARD_DIR" >&2; exit 2; }
mkdir -p "$out"
log="$out/gpu_checks.log"
json="$out/gpu_checks.json"
work=$(mktemp -d)
py=${PYTHON:-python3}
failed=0
: >"$log"
echo "{}" >"$json"

step() { # step NAME LIMIT_S CMD...: run, log, report rc and wall time; output kept in $work/NAME.out
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s%N)
  echo "=== $name" | tee -a "$log"
  timeout "$limit" "$@" >"$work/$name.out" 2>&1
  rc=$?
  cat "$work/$name.out" >>"$log"
  echo "=== $name: rc=$rc in $((($(date +%s%N) - start) / 1000000)) ms" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

record() { # record KEY [VALUE]: add VALUE (JSON), or the JSON lines step KEY printed, to the summary
  "$py" - "$json" "$1" "${2-}" "$work/$1.out" <<'PY'
import json, os, sys
path, key, value, output = sys.argv[1:]
if not value:
    lines = open(output).read().splitlines() if os.path.exists(output) else []
    found = [json.loads(line) for line in lines if line.startswith("{")]
    value = json.dumps([{k: v for k, v in f.items() if k != "history"} for f in found])
data = json.load(open(path))
data[key] = json.loads(value)
json.dump(data, open(path, "w"), indent=1)
PY
}

id3_sampling_compare() { # id3_sampling_compare RUN_DIR SEED_DIR DEVICE BATCH [ARGS...]: samplers vs DDIM-50
  local run=$1 seed_dir=$2 device=$3 batch=$4
  shift 4
  step id3_sampling_compare 600 "$py" -m facesynth.benchmarks.bench_id3_sampling --compare --json \
    --pipeline "$seed_dir/id3_full/pipeline" --identity-encoder "torch:$run/encoder_A" \
    --eval-encoder "torch:$run/encoder_B" --kappa 30 --batch "$batch" --device "$device" "$@"
  record id3_sampling_compare
}

if [ "$smoke" = 1 ]; then
  step id3_ablation_smoke 900 "$py" -m facesynth.benchmarks.ablation_id3_parametric --smoke --out "$work/ablation"
  cp "$work/ablation/ablation.json" "$out/ablation_smoke.json" 2>/dev/null
  # one thread: on a small shared CPU two threads thrash (the 32-image compare ran past 600 s)
  id3_sampling_compare "$work/ablation" "$work/ablation/seed0" cpu 8 --threads 1
  step id3_sampling_speed 300 "$py" -m facesynth.benchmarks.bench_id3_sampling --json --steps 4 --repeats 1 \
    --threads 1
  record id3_sampling_speed
  # the recognizer input figures of the GPU run, on tiny settings (JPEG faces it makes itself)
  step recognizer_input_smoke 300 env OMP_NUM_THREADS=1 "$py" -m facesynth.benchmarks.bench_recognizer_training \
    --identities 8 --per-identity 8 --input-size 32 --batch-size 8 --warmup 1 --steps 3 \
    --decode workers device --json
  record recognizer_input_smoke
  cat "$json"
  rm -rf "$work"
  exit "$failed"
fi

step environment 60 bash -c "nvidia-smi -L; $py -c 'import torch, diffusers, accelerate; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), diffusers.__version__, accelerate.__version__)'"

step gpu_tests 150 "$py" -m pytest -q -p no:cacheprovider -n 6 tests/test_gpu.py
# device decoding against Pillow (nvJPEG tolerance), training with pinned non-blocking input
step input_gpu_tests 90 "$py" -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_input_pipeline.py

step id3_train_and_sample 150 "$py" -m facesynth.benchmarks.bench_id3_gpu --preset base --size 112
record id3_train_and_sample

# loader alone / model alone / both, decoding in workers and on the GPU; 8 + 30 steps stay inside one
# epoch of a 5,000-image SHARD_DIR (each epoch starts new loader workers)
for precision in bf16 fp16; do
  step "recognizer_input_$precision" 240 "$py" -m facesynth.benchmarks.bench_recognizer_training --data "$data" \
    --backbone r50 --batch-size 128 --precision "$precision" --decode workers device --warmup 8 --steps 30 --json
  record "recognizer_input_$precision"
done

# plain bf16 and fp16 training are the "both" figures above
for run in plain:no dctdp:bf16 duetface:bf16 partialface:bf16 minusface:bf16; do
  method=${run%%:*} precision=${run##*:}
  step "recognizer_${method}_${precision}" 60 "$py" -m facesynth train-recognizer --no-onnx --no-tensorboard \
    --data "$data" --output-dir "$work/rec-$method-$precision" --privacy "$method" --backbone r50 \
    --mixed-precision "$precision" --batch-size 128 --max-steps 60 --log-every 20 --num-workers 8 --no-progress
  csv="$work/rec-$method-$precision/train_log.csv"
  [ -f "$csv" ] && record "recognizer_${method}_${precision}_images_per_s" "$("$py" -c '
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(rows[-1]["images_per_s"])' "$csv")"
done

if [ "${ID3_ABLATION:-0}" = 1 ]; then
  step id3_ablation_gpu64 1500 "$py" -m facesynth.benchmarks.ablation_id3_parametric --recipe gpu64 \
    --out "$out/ablation_gpu64"
  id3_sampling_compare "$out/ablation_gpu64" "$out/ablation_gpu64/seed0" cuda 32
fi

step frequency_frontend 90 "$py" -m facesynth.benchmarks.bench_frequency_frontend --device cuda --batch 128
step tammes_10k_512d 120 "$py" -m facesynth.benchmarks.bench_tammes --device cuda --n 10000 --dim 512 --json
record tammes_10k_512d
step tammes_100k_512d 240 "$py" -m facesynth.benchmarks.bench_tammes --device cuda --n 100000 --dim 512 --json
record tammes_100k_512d

cat "$json"
rm -rf "$work"
exit "$failed"
