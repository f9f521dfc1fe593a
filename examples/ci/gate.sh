#!/usr/bin/env sh
# Gate a large-batch training job on `bscrit check` (plain POSIX shell; no torch needed).
#
#   MEASUREMENT=runs/measure.json sh gate.sh 4096 python train.py --batch-size 4096
#
# bscrit check exits 0 when the target batch size is within the recommended range, 1 when it is
# past the critical batch size B* of [LMA21] Thm 5.6 (with BSCRIT_STRICT=1: past its lower 95%
# bound), 2 when the measurement file is missing or malformed. Only exit 0 starts the job, with
# the scaled hyperparameters written to $SCALED (JSON of `bscrit scale --json`).
set -eu

MEASUREMENT=${MEASUREMENT:-runs/measure.json}
SCALED=${SCALED:-scaled.json}
C2=${BSCRIT_C2:-2.0}
TARGET=${1:?usage: gate.sh TARGET_BATCH_SIZE [COMMAND ...]}
shift

STRICT=""
if [ -n "${BSCRIT_STRICT:-}" ]; then STRICT="--strict"; fi

set +e
bscrit check "$MEASUREMENT" --batch-size "$TARGET" --c2 "$C2" $STRICT
rc=$?
set -e
case $rc in
  0) ;;
  1) echo "gate: batch size $TARGET is past the critical batch size; not starting the job" >&2
     exit 1 ;;
  *) echo "gate: bscrit check could not decide (exit $rc); not starting the job" >&2
     exit "$rc" ;;
esac

bscrit scale --measurement "$MEASUREMENT" --target-batch-size "$TARGET" --c2 "$C2" --json > "$SCALED"
echo "gate: batch size $TARGET passed; scaled hyperparameters in $SCALED" >&2
if [ "$#" -gt 0 ]; then exec "$@"; fi
