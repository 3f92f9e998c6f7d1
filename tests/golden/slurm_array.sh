#!/bin/bash
# dlkit.scan: Slurm job array of scan golden, points 0-3,5.
# Written by `dlkit-scan run --engine slurm`; the scan's ledger decides what each task runs,
# so running a task again (requeue, resubmission) is safe: done points do not run twice.
#SBATCH --job-name=dlkit-golden
#SBATCH --array=0-3,5%2
#SBATCH --output=@LEDGER@/logs/slurm-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --partition=gpu
#SBATCH --time=2:30:00
#SBATCH --gres=gpu:1
#SBATCH --mem=8G
#SBATCH --cpus-per-task=4
#SBATCH --account=physics
#SBATCH --qos=high
#SBATCH --constraint=a100

set -u
ledger=@LEDGER@
point=${SLURM_ARRAY_TASK_ID:?not in a job array (submit this script)}
cd @WORKDIR@ || exit 1
export PYTHONPATH=@PYTHONPATH@${PYTHONPATH:+:$PYTHONPATH}
final() { [ -e "$ledger/done/$point.json" ] || [ -e "$ledger/failed/$point.json" ]; }
# forward the scheduler's signals to the worker: it stops the point, which saves and exits 75
got= worker=
forward() { got=$1; if [ -n "$worker" ]; then kill -s "$1" "$worker" 2>/dev/null; fi; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT
@PYTHON@ -m dlkit.scan work "$ledger" --points "$point" --engine slurm \
    --max-retries 3 --lease-timeout 30 --threads-per-point "${SLURM_CPUS_PER_TASK:-1}" &
worker=$!
while kill -0 "$worker" 2>/dev/null; do wait "$worker"; done
wait "$worker"; code=$?
if [ "$code" -eq 75 ] && [ "$got" = USR1 ] && ! final; then
    echo "dlkit.scan: point $point saved before the time limit; requeueing this task to resume it"
    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" && exit 0
fi
exit "$code"
