# Shared set-up of the one-call GPU scripts (sourced by benchmarks/device_*.sh, from the repository
# root, after each has set its own ANOMALY_THREADS and run lengths): the defaults of PY, DEVICE, BUILD
# and W, OUT required; then device_setup: the offline wheels of .whl/ installed when on a GPU, a
# torch/CUDA/MONAI check, and (BUILD=1) the cohort splits named as arguments rebuilt there.
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BUILD=${BUILD:-1}
W=${W:-runs/device}
OUT=${OUT:?set OUT}
device_setup() {  # device_setup SPLIT...
  mkdir -p "$W" "$OUT"
  if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1 && [ "$DEVICE" != cpu ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
    export PYTHONPATH=/tmp/site:$PWD
  fi
  nvidia-smi -L 2>/dev/null
  $PY -c "import torch, monai, nibabel; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)" || return 1
  if [ "$BUILD" = 1 ]; then
    $PY -m anomaly.data build --out data/cohort --seed 0 --workers 14 --only "$@" > "$W/build.log" 2>&1 || { tail -20 "$W/build.log"; return 1; }
    tail -c 400 "$W/build.log"
  fi
  for s in "$@"; do md5sum "data/cohort/$s/labels.csv"; done  # compared with this machine's build
}

pack() {  # pack NAME DIR: the model folder into $OUT/NAME.tgz, without its resumable states (work/, work_asr/)
  tar czf "$OUT/$1.tgz" --exclude=work --exclude=work_asr -C "$(dirname "$2")" "$(basename "$2")" && echo "packed $1"
}
train_packed() {  # train_packed NAME ARGS...: python -m anomaly.train ARGS into $W/NAME (log $W/NAME.log), then pack it
  local n=$1; shift
  $PY -m anomaly.train "$@" --out "$W/$n" > "$W/$n.log" 2>&1; echo "$n rc=$?"; pack "$n" "$W/$n"
}
report_logs() {  # the last lines of every log in $W, and the logs packed into $OUT/logs.tgz
  for f in "$W"/*.log; do echo "== $f"; tail -c 500 "$f" | tr '\r' '\n' | tail -4; done
  tar czf "$OUT/logs.tgz" "$W"/*.log
}
