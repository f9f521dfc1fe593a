#!/usr/bin/env sh
# Gate a large-batch training job on `bscrit check` (plain POSIX shell; no torch needed).
#
#   MEASUREMENT=runs/measure.json sh gate.sh 4096 python train.py --batch-size 4096
#
# bscrit check gates on the lower 95% bound of the critical batch size B* ([LMA21] Thm 5.6):
#   0  B' is within the recommended range, from an interval over the equilibrium
#   1  B' is past the point estimate of B* (or the scaling rule's reach, or the dataset size)
#   2  the measurement file is missing or malformed
#   5  undecided: B' is between the lower 95% bound of B* and its point estimate
#      (BSCRIT_GATE=point: pass with a warning, the old default; BSCRIT_STRICT=1: exit 1)
#   6  provisional: in range, but the interval covers the measured checkpoint(s) only, not the
#      equilibrium (BSCRIT_ALLOW_PROVISIONAL=1: pass; better, measure several checkpoints
#      1/(2ηλ) steps apart, or `bscrit measure --sample-steps auto`)
# Only exit 0 starts the job, with the scaled hyperparameters written to $SCALED (JSON of
# `bscrit scale --json`).
set -eu

MEASUREMENT=${MEASUREMENT:-runs/measure.json}
SCALED=${SCALED:-scaled.json}
C2=${BSCRIT_C2:-2.0}
TARGET=${1:?usage: gate.sh TARGET_BATCH_SIZE [COMMAND ...]}
shift

GATE=${BSCRIT_GATE:-lower}
STRICT=""
if [ -n "${BSCRIT_STRICT:-}" ]; then STRICT="--strict"; fi
ALLOW=""
if [ -n "${BSCRIT_ALLOW_PROVISIONAL:-}" ]; then ALLOW="--allow-provisional"; fi

set +e
bscrit check "$MEASUREMENT" --batch-size "$TARGET" --c2 "$C2" --gate "$GATE" $STRICT $ALLOW
rc=$?
set -e
case $rc in
  0) ;;
  1) echo "gate: batch size $TARGET is past the critical batch size; not starting the job" >&2
     exit 1 ;;
  5) echo "gate: batch size $TARGET is undecided (between the lower 95% bound of B* and its" \
          "point estimate); not starting the job" >&2
     exit 5 ;;
  6) echo "gate: batch size $TARGET is in range only provisionally (one checkpoint's interval);" \
          "not starting the job (BSCRIT_ALLOW_PROVISIONAL=1 to accept)" >&2
     exit 6 ;;
  *) echo "gate: bscrit check could not decide (exit $rc); not starting the job" >&2
     exit "$rc" ;;
esac

bscrit scale --measurement "$MEASUREMENT" --target-batch-size "$TARGET" --c2 "$C2" --json > "$SCALED"
echo "gate: batch size $TARGET passed; scaled hyperparameters in $SCALED" >&2
if [ "$#" -gt 0 ]; then exec "$@"; fi
