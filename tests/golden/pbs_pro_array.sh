#!/bin/bash
# dlkit.scan: PBS Pro job array of scan golden, points 0-3,5.
# Written by `dlkit-scan run --engine pbs`; the scan's ledger decides what each task runs,
# so running a task again (rerun, resubmission) is safe: done points do not run twice.
#PBS -N dlkit-golden
#PBS -J 0-5
#PBS -W max_run_subjobs=2
#PBS -r y
#PBS -j oe
#PBS -o @LEDGER@/logs/
#PBS -V
#PBS -q gpu
#PBS -A physics
#PBS -l walltime=2:30:00
#PBS -l select=1:ncpus=4:mem=8gb:ngpus=1
#PBS -l place=scatter
#PBS -m abe

set -u
ledger=@LEDGER@
point=${PBS_ARRAY_INDEX:?not in a job array (submit this script)}
case " 0 1 2 3 5 " in
    *" $point "*) ;;
    *) echo "dlkit.scan: array index $point is not a point of this submission"; exit 0 ;;
esac
cd @WORKDIR@ || exit 1
export PYTHONPATH=@PYTHONPATH@${PYTHONPATH:+:$PYTHONPATH}
final() { [ -e "$ledger/done/$point.json" ] || [ -e "$ledger/failed/$point.json" ]; }
# forward the scheduler's signals to the worker: it stops the point, which saves and exits 75
got= worker=
forward() { got=$1; if [ -n "$worker" ]; then kill -s "$1" "$worker" 2>/dev/null; fi; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT
@PYTHON@ -m dlkit.scan work "$ledger" --points "$point" --engine pbs \
    --max-retries 3 --lease-timeout 30 --threads-per-point "${NCPUS:-1}" &
worker=$!
while kill -0 "$worker" 2>/dev/null; do wait "$worker"; done
wait "$worker"; code=$?
if [ "$code" -eq 75 ] && ! final; then
    echo "dlkit.scan: point $point stopped after saving; run the scan again (or with --wait) to resume it"
fi
exit "$code"
