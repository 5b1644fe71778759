#!/bin/bash
# `uda train` on 2 nodes x 8 GPUs under SLURM: one task per node, each starts Accelerate's
# launcher, which starts one training process per GPU. Submit from the repository root:
#
#   sbatch docs/examples/slurm_multi_node.sh
#
# Requeued or resubmitted, the job continues its run from the newest checkpoint.
#SBATCH --job-name=uda-mic
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#SBATCH --requeue
# SIGTERM to every task 5 minutes before the time limit: training saves and exits 3.
#SBATCH --signal=TERM@300
set -euo pipefail

export GPUS_PER_NODE=8
export MAIN_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MAIN_PORT=29500
# Every node must see the same cache (generated data, rare-class statistics, the dispersion
# auxiliary network) and the same work dir (checkpoints): use a shared filesystem.
export UDA_CACHE_DIR=/shared/uda/cache
export WORK_DIR=/shared/uda/work_dirs
export RUN_NAME=mic-dispersion-2x8

# First submission: a new run folder; later ones: continue its newest checkpoint (the saved
# config is used; --set still overrides it).
if compgen -G "$WORK_DIR/$RUN_NAME/checkpoints/iter_*.pt" > /dev/null; then
  export RUN_ARGS="--resume latest --work-dir $WORK_DIR/$RUN_NAME"
else
  export RUN_ARGS="--preset mic --plugin dispersion --work-dir $WORK_DIR --name $RUN_NAME"
fi

# Single quotes: SLURM_NODEID differs per node, so it is expanded inside each task.
status=0
srun --kill-on-bad-exit=1 bash -c '
  .venv/bin/accelerate launch \
    --config_file docs/examples/accelerate_multi_node.yaml \
    --num_machines "$SLURM_NNODES" \
    --num_processes "$((SLURM_NNODES * GPUS_PER_NODE))" \
    --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$MAIN_HOST" \
    --main_process_port "$MAIN_PORT" \
    -m uda_cli.main train $RUN_ARGS --set data.workers=6' || status=$?

# Exit status 3: stopped by the signal after saving a checkpoint; requeue to continue.
if [ "$status" -eq 3 ]; then
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
