#!/usr/bin/env bash
# The whole story (issue 5 "The demo"): set up (packages + build), convert Fashion-MNIST to
# resdist's HDF5 format, start a coordinator (auth token, state dir), submit a 2-worker ResNet-20
# job through it, watch it with the progress bar, request a checkpoint mid-run, print the final
# test accuracy and the checkpoint paths, stop the coordinator. Exits non-zero unless the job
# SUCCEEDED. About 5-6 minutes of training on a quiet 2-core machine (3 epochs).
#
# Environment:
#   DEMO_EPOCHS (3)               epochs of ResNet-20
#   DEMO_CHECKPOINT_AFTER (45)    seconds after submitting to run `resdist checkpoint`
#   DEMO_SKIP_SETUP (0)           1: skip scripts/setup.sh (the build in RESDIST_BUILD_DIR exists)
#   RESDIST_BUILD_DIR (build/)    where setup.sh builds and the binaries are taken from
# Everything the demo writes is under runs/demo/ (recreated each run); the datasets go to data/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${RESDIST_BUILD_DIR:-$ROOT/build}"
EPOCHS="${DEMO_EPOCHS:-3}"
CHECKPOINT_AFTER="${DEMO_CHECKPOINT_AFTER:-45}"
DEMO="$ROOT/runs/demo"
STARTED=$SECONDS

stage() { printf '\n=== demo [%3ds] %s\n' $((SECONDS - STARTED)) "$*"; }
say() { printf 'demo: %s\n' "$*"; }

stage "1/7 set-up: Debian packages and the build ($BUILD_DIR)"
if [[ "${DEMO_SKIP_SETUP:-0}" == 1 ]]; then
  say "DEMO_SKIP_SETUP=1: using the existing build"
else
  "$ROOT/scripts/setup.sh"
fi
CLI="$BUILD_DIR/client/resdist"
COORDINATOR="$BUILD_DIR/coordinator/resdist-coordinator"
WORKER="$BUILD_DIR/worker/resdist-worker"
for b in "$CLI" "$COORDINATOR" "$WORKER"; do
  [[ -x "$b" ]] || { say "missing $b (run scripts/setup.sh)"; exit 1; }
done

stage "2/7 Fashion-MNIST -> resdist HDF5 (data/fmnist-{train,test}.h5)"
DATA="$ROOT/data"
FMNIST=/usr/share/datasets/fashion-mnist
CLASSES="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
mkdir -p "$DATA"
for split in train t10k; do
  out="$DATA/fmnist-$([[ $split == train ]] && echo train || echo test).h5"
  if [[ -f "$out" ]] && "$CLI" dataset inspect "$out" > /dev/null 2>&1; then
    say "$out is valid; not converting again"
  else
    "$CLI" dataset convert --from idx \
      --images "$FMNIST/$split-images-idx3-ubyte.gz" --labels "$FMNIST/$split-labels-idx1-ubyte.gz" \
      --class-names "$CLASSES" --out "$out"
  fi
done

stage "3/7 coordinator: token, state dir, resdist-coordinator on 127.0.0.1"
rm -rf "$DEMO"
mkdir -p "$DEMO"
TOKEN_FILE="$DEMO/token"
(umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' > "$TOKEN_FILE")
COORDINATOR_LOG="$DEMO/coordinator.log"
COORDINATOR_PID=""
JOB=""
CHECKPOINT_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$CHECKPOINT_PID" ]]; then kill "$CHECKPOINT_PID" 2> /dev/null || true; fi
  if [[ -n "$COORDINATOR_PID" ]] && kill -0 "$COORDINATOR_PID" 2> /dev/null; then
    # Stopping the coordinator leaves workers running by design: end an unfinished job first.
    if [[ -n "$JOB" && $rc -ne 0 ]]; then
      "$CLI" cancel "$JOB" --reason "demo ended early" > /dev/null 2>&1 || true
    fi
    say "stopping the coordinator (pid $COORDINATOR_PID)"
    kill -TERM "$COORDINATOR_PID" 2> /dev/null || true
    wait "$COORDINATOR_PID" 2> /dev/null || true
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$COORDINATOR" --listen 127.0.0.1:0 --state-dir "$DEMO/state" --data-root "$ROOT" \
  --auth-token-file "$TOKEN_FILE" --worker-binary "$WORKER" > "$COORDINATOR_LOG" 2>&1 &
COORDINATOR_PID=$!
ADDRESS=""
for _ in $(seq 1 300); do
  ADDRESS="$(sed -n 's/^resdist-coordinator listening on //p' "$COORDINATOR_LOG" | head -n 1)"
  [[ -n "$ADDRESS" ]] && break
  kill -0 "$COORDINATOR_PID" 2> /dev/null || { cat "$COORDINATOR_LOG"; say "the coordinator exited"; exit 1; }
  sleep 0.1
done
[[ -n "$ADDRESS" ]] || { cat "$COORDINATOR_LOG"; say "no 'listening on' line"; exit 1; }
export RESDIST_COORDINATOR="$ADDRESS" RESDIST_TOKEN_FILE="$TOKEN_FILE"
say "coordinator pid $COORDINATOR_PID listening on $ADDRESS (log: $COORDINATOR_LOG)"

stage "4/7 job file: 2 workers x 1 thread, ResNet-20, $EPOCHS epochs"
JOB_FILE="$DEMO/fmnist-resnet20.yaml"
# Paths are relative to the coordinator's --data-root (the repository).
cat > "$JOB_FILE" << EOF
name: demo-fmnist-resnet20
model: {arch: resnet20, num_classes: 10, shortcut: A}
data:
  train: data/fmnist-train.h5
  eval: data/fmnist-test.h5
  augment: {crop_padding: 2, flip: false}
batch_size: 128            # global: 64 per worker
epochs: $EPOCHS
optimizer: {lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4, decay_bn_and_bias: false,
            schedule: cosine, warmup_epochs: 0.2}
seed: 1
threads_per_worker: 1
workers: 2
max_restarts: 1
eval_every_epochs: 1
output_dir: runs/demo/out
checkpoint: {every_steps: 100, keep_last: 3}   # plus one at each epoch end and at the end
EOF
sed 's/^/    /' "$JOB_FILE"

stage "5/7 submit"
JOB="$("$CLI" submit "$JOB_FILE" | tail -n 1)"
say "submitted $JOB"

stage "6/7 watch $JOB (a checkpoint is requested after ${CHECKPOINT_AFTER}s)"
CHECKPOINT_OUT="$DEMO/requested-checkpoint.txt"
(
  sleep "$CHECKPOINT_AFTER"
  say "requesting a checkpoint: resdist checkpoint $JOB"
  if "$CLI" checkpoint "$JOB" --timeout 300 > "$CHECKPOINT_OUT"; then
    say "requested checkpoint written: $(cat "$CHECKPOINT_OUT")"
  else
    say "the requested checkpoint was not written"
  fi
) &
CHECKPOINT_PID=$!
WATCH_RC=0
"$CLI" watch "$JOB" || WATCH_RC=$?
wait "$CHECKPOINT_PID" 2> /dev/null || true
CHECKPOINT_PID=""

stage "7/7 result"
STATUS_JSON="$DEMO/status.json"
"$CLI" status "$JOB" --json > "$STATUS_JSON"
/usr/bin/python3 - "$STATUS_JSON" "$CHECKPOINT_OUT" << 'EOF'
import json, os, sys
doc = json.load(open(sys.argv[1]))
st = doc["status"]
p = st.get("progress", {})
print(f"demo: job {st['job_id']} {st['state'].replace('JOB_STATE_', '')} after "
      f"{len(st.get('attempts', []))} attempt(s), step {p.get('step', 0)}/{st.get('total_steps', 0)}")
acc = p.get("eval_accuracy", -1)
if acc is not None and acc >= 0:
    print(f"demo: final test accuracy {100 * acc:.2f}% (eval loss {p.get('eval_loss', 0):.4f}), "
          f"train accuracy {100 * p.get('train_accuracy', 0):.2f}%, {p.get('images_per_s', 0):.0f} images/s")
if os.path.exists(sys.argv[2]) and open(sys.argv[2]).read().strip():
    print(f"demo: requested checkpoint: {open(sys.argv[2]).read().strip()}")
last = st.get("last_checkpoint", {})
if last.get("path"):
    print(f"demo: final checkpoint:     {last['path']} (step {last.get('step', 0)}, {last.get('bytes', 0)} bytes)")
for e in doc.get("events", []):
    if e.get("kind") in ("restart", "attempt"):
        print(f"demo: event: {e['message']}")
EOF
say "checkpoints kept (keep_last 3 + the requested one if still among the newest):"
ls -1 "$DEMO/out/checkpoints" | sed 's/^/    /'
say "total time $((SECONDS - STARTED)) s"
if [[ $WATCH_RC -ne 0 ]]; then
  say "the job did not succeed (watch exit code $WATCH_RC); see $CLI logs $JOB"
  exit 1
fi
