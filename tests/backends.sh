#!/usr/bin/env bash
# The Keras-backend subsets (README, "Development"): what must hold on every backend, run under
# KERAS_BACKEND=jax and KERAS_BACKEND=torch, then the cross-backend save/load matrix once (each of its
# backends runs in its own process). Needs the jax and torch extras in the active venv:
#     pip install '.[jax,torch]' torch==2.13.0 && tests/backends.sh
# Arguments: the backends to run the subset under (default: jax torch).
set -euo pipefail
cd "$(dirname "$0")/.."
subset=(
    tests/test_generator_keras.py                 # every event exactly once per Keras epoch, zero-copy batches
    tests/test_losses.py
    tests/test_point_models.py                    # permutation/padding invariance, k-NN, save/load
    tests/test_callbacks.py
    tests/test_model_wrapper.py                   # (less its kill-during-save tests: the file protocol is the same)
    tests/test_resume.py::test_signals_mid_epoch_then_resume_reproduce_the_uninterrupted_run   # to 1e-6
    tests/test_calodnn_experiment.py::test_end_to_end_cli_subprocess            # one --Test run per package
    tests/test_calodnn_points.py::test_each_point_model_trains_resumes_and_loads   # each point model, -p
    tests/test_lartpcdnn_experiment.py::test_end_to_end_cli_subprocess
    tests/test_lartpcdnn_pid.py::test_tiny_run_without_tensorflow
    tests/test_clustercount_experiments.py::test_two_step_pipeline_and_scan_table
    tests/test_export.py::test_onnx_of_a_model_trained_on_this_backend   # exported on TensorFlow, to 1e-5
    tests/test_distribute.py::test_two_slurm_tasks_train_one_model_stop_together_and_resume  # JAX, srun -n 2
)
backends=("$@")
[ ${#backends[@]} -gt 0 ] || backends=(jax torch)
for backend in "${backends[@]}"; do
    echo "== KERAS_BACKEND=$backend"
    KERAS_BACKEND=$backend pytest -q -n 2 --dist loadfile "${subset[@]}" \
        --deselect tests/test_model_wrapper.py::test_a_kill_at_any_step_of_a_save_leaves_a_consistent_resumable_pair \
        --deselect tests/test_model_wrapper.py::test_a_kill_during_a_checkpoint_save_keeps_the_previous_checkpoint
done
echo "== save on X / load on Y, X and Y in tensorflow, jax, torch"
pytest -q tests/test_backends.py
