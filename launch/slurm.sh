#!/usr/bin/env bash
# A raysweep sweep as one SLURM job: Ray's head on the first node, a Ray worker on every other node, then the
# launcher on the head, attached with --address. Step by step (README, "Running on a cluster"):
#
#   1. On the login node, once: a Python environment on the shared file system with raysweep installed,
#        python -m venv ~/venvs/raysweep && ~/venvs/raysweep/bin/pip install -e .
#   2. Adjust the #SBATCH lines (nodes, GPUs, time, partition) and RAYSWEEP_VENV / RAYSWEEP_STORAGE below.
#   3. sbatch launch/slurm.sh search_spaces/quickstart.yaml [more launcher flags, e.g. --max-concurrent 16]
#   4. tail -f raysweep-<jobid>.log    # "[raysweep attached to 10.0.0.5:6379 from host node001 (the head node)] ..."
#   5. A job that hit its time limit is continued by submitting the same command again: configurations that
#      already have a row are not run twice.
#
# Storage: --storage must be a file system every node mounts (home, scratch, Lustre, GPFS, NFS), hence
# --shared-storage below; or an object store URI (s3://..., gs://...), which needs no flag.
#
#SBATCH --job-name=raysweep
#SBATCH --nodes=3                 # 1 head + 2 workers; every node runs trials
#SBATCH --ntasks-per-node=1       # one `ray start` per node
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-task=4
#SBATCH --mem=0                   # all of each node's memory
#SBATCH --time=04:00:00
#SBATCH --output=raysweep-%j.log
##SBATCH --partition=gpu

set -euo pipefail

SPACE=${1:?usage: sbatch launch/slurm.sh SPACE.yaml [launcher flags...]}
shift
VENV=${RAYSWEEP_VENV:-$HOME/venvs/raysweep}
STORAGE=${RAYSWEEP_STORAGE:-$HOME/raysweep-results}     # on the shared file system
# A port of this job's own: two raysweep jobs sharing a node must not share a GCS port.
PORT=$((6379 + ${SLURM_JOB_ID:-0} % 1000))
CPUS=${SLURM_CPUS_PER_TASK:-1}
GPUS=${SLURM_GPUS_PER_TASK:-0}

# shellcheck disable=SC1091
source "$VENV/bin/activate"
export RAY_USAGE_STATS_ENABLED=0

# The nodes of this job; the first is the head.
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${NODES[0]}
HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname --ip-address | awk '{print $1}')
ADDRESS="$HEAD_IP:$PORT"
echo "raysweep: head $HEAD ($ADDRESS), ${#NODES[@]} nodes"

# Head: `ray start --block` keeps the srun step (and with it the node) alive until the job ends; SLURM stops
# the steps when this script exits. Its own temp dir per job keeps concurrent jobs apart.
srun --nodes=1 --ntasks=1 -w "$HEAD" \
    ray start --head --node-ip-address="$HEAD_IP" --port="$PORT" --num-cpus="$CPUS" --num-gpus="$GPUS" \
    --temp-dir="/tmp/ray-$SLURM_JOB_ID" --include-dashboard=false --block &
sleep "${RAYSWEEP_HEAD_WAIT_S:-10}"  # the GCS must be up before workers join

# Workers: every other node joins the head.
for node in "${NODES[@]:1}"; do
    srun --nodes=1 --ntasks=1 -w "$node" \
        ray start --address="$ADDRESS" --num-cpus="$CPUS" --num-gpus="$GPUS" \
        --temp-dir="/tmp/ray-$SLURM_JOB_ID" --block &
done

# Wait (up to 5 minutes) until every node has joined, so that the first trials spread over all of them.
python - "$ADDRESS" "${#NODES[@]}" <<'EOF'
import sys, time
import ray

ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.time() + 300
while (alive := sum(n["Alive"] for n in ray.nodes())) < int(sys.argv[2]) and time.time() < deadline:
    time.sleep(5)
print(f"raysweep: {alive} of {sys.argv[2]} nodes joined")
EOF

# The driver: on the head node (this batch script runs there), attached to the cluster.
set +e
python -m raysweep.launch "$SPACE" --address "$ADDRESS" --storage "$STORAGE" --shared-storage "$@"
status=$?
echo "raysweep: launcher exited with $status; stopping Ray"
exit $status
