#!/usr/bin/env bash
# cnnas workers as a SLURM job array: one array task = one worker = one GPU.
#
#   1. start the study on one machine (it runs trials too):
#        cnnas study start --config study.yaml --name my-study
#   2. sbatch --array=0-7 deploy/slurm-workers.sh study.yaml my-study
#
# study.yaml must name the shared stores: study.storage (postgresql://...) and an mlflow.yml
# whose tracking_uri is the MLflow server (cnnas tracking-server) or a database of its own (not
# the Optuna one). A task that is preempted or killed stops sending heartbeats; after
# study.grace_period another worker fails its trial and runs it again (study.retries), so
# requeueing (--requeue) is safe.
#
# The resources below are an example: options on the sbatch command line override them, e.g.
#   sbatch --array=0-1 --cpus-per-task=1 --mem=1G deploy/slurm-workers.sh study.yaml my-study
# (tests/search/test_slurm.py submits it so on a one-node cluster). CNNAS_VENV names the
# environment with cnnas installed.
#SBATCH --job-name=cnnas-worker
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=cnnas-worker-%A_%a.log
set -euo pipefail

config=${1:?usage: sbatch --array=0-N slurm-workers.sh CONFIG STUDY}
study=${2:?usage: sbatch --array=0-N slurm-workers.sh CONFIG STUDY}

# The environment with cnnas installed (pip install 'cnnas[postgres]'); adapt to your site.
source "${CNNAS_VENV:-$HOME/cnnas-venv}/bin/activate"

# SLURM already restricts the task to its GPU (CUDA_VISIBLE_DEVICES), so no --device here.
exec cnnas worker --study "$study" --config "$config" --threads "${SLURM_CPUS_PER_TASK:-1}"
