"""Launching a study on many machines: one command per cell, and ready-to-run scripts for a
Cloud TPU VM fleet and a SLURM job array whose workers share the study workdir
(experiments/study.py's worker modes)."""

from __future__ import annotations

import os
import shlex
import sys

import ml_collections

from lmreuse import workdir as workdir_lib
from lmreuse.study import grid


def first_seed(config: ml_collections.ConfigDict) -> int | None:
  """The seed whose cells sweep under selection='first_seed' (None under 'all')."""
  return config.study.seeds[0] if config.study.selection == "first_seed" else None


def _command_args(workdir: str) -> list[str]:
  """This command's run.py arguments minus those that pick cells or print launch lines."""
  args = [
      a
      for a in sys.argv[1:]
      if not a.startswith(
          (
              "--config.study.only",
              "--config.study.print_launch",
              "--config.study.worker",
              "--workdir",
          )
      )
  ]
  return args + [f"--workdir={os.path.abspath(workdir)}"]


def launch_lines(
    config: ml_collections.ConfigDict, workdir: str, cells: list[grid.Cell]
) -> list[str]:
  """One command per cell for a cluster sweep; pretraining cells must finish before the rest,
  and under first-seed selection a group's first-seed cells before its later seeds."""
  base = [sys.executable, "run.py", *_command_args(workdir)]
  sweep_seed = first_seed(config)
  lines = []
  for cell in cells:
    after = f"  # after {cell.depends_on}" if cell.depends_on else "  # first"
    if sweep_seed is not None and cell.hparams and cell.seed != sweep_seed:
      after = (
          f"  # after the seed{sweep_seed} cells of its group; exits at once unless "
          "its configuration is selected"
      )
    lines.append(shlex.join(base + [f"--config.study.only={cell.index}"]) + after)
  return lines


_TPU_FLEET = """\
#!/usr/bin/env bash
# Study {name}: {count} cells, shared out among Cloud TPU VMs. Every host of every VM runs
# the study with --config.study.worker=claim: each VM takes the next ready cell; a cell whose
# VM is preempted or dies is taken over by another and resumes from its checkpoints. Run this
# script again after a preemption: finished cells are skipped. Written by print_launch.
#
# FILL IN (edit here or export): the TPU VMs, their zone, the repository's path on them, and
# the study workdir, on a filesystem every VM mounts at the same path (e.g. Filestore/NFS).
VMS="${{VMS:-CHANGE_ME_VM_1 CHANGE_ME_VM_2}}"
ZONE="${{ZONE:-CHANGE_ME_ZONE}}"
REPO="${{REPO:-{repo}}}"
WORKDIR="${{WORKDIR:-{workdir}}}"
PYTHON="${{PYTHON:-python3}}"
# --distributed: the hosts of a multi-host slice join one JAX run (JAX finds its peers).
DISTRIBUTED="${{DISTRIBUTED:---distributed}}"
LOGS="${{LOGS:-$(dirname "$0")/logs}}"  # on this machine: one log per VM

set -euo pipefail
case "$VMS $ZONE" in
  *CHANGE_ME*) echo "$0: set VMS and ZONE (at the top of this script, or export them)" >&2
               exit 2 ;;
esac
ARGS=({args})
COMMAND="cd $(printf %q "$REPO") && $PYTHON run.py $(printf '%q ' "${{ARGS[@]}}")"
COMMAND+="--workdir=$(printf %q "$WORKDIR") --config.study.worker=claim $DISTRIBUTED"
mkdir -p "$LOGS"
PIDS=()
for VM in $VMS; do
  gcloud compute tpus tpu-vm ssh "$VM" --zone="$ZONE" --worker=all --command="$COMMAND" \\
      >"$LOGS/$VM.log" 2>&1 &
  PIDS+=("$!")
  echo "$VM: logging to $LOGS/$VM.log"
done
STATUS=0
for PID in "${{PIDS[@]}}"; do
  wait "$PID" || STATUS=$?
done
exit "$STATUS"
"""

_SLURM_ARRAY = """\
#!/usr/bin/env bash
# Study {name}: {count} cells, run by a SLURM job array whose tasks share the study workdir
# (a shared filesystem). Submit with: sbatch [--partition=P] {path}
# Each task runs the study as a worker: MODE=claim (the default) takes the next ready cell, so
# any array size works and a requeued or late task finds what is left; MODE=static gives task
# I of N the cells at positions I, I+N, ... Resubmit after a preemption: finished cells are
# skipped and unfinished ones resume from their checkpoints (a preempted run exits 75).
#
# FILL IN: the #SBATCH lines below (or give them to sbatch, or export SBATCH_PARTITION etc.).
#SBATCH --job-name=lmreuse-{name}
#SBATCH --array=0-{last}
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --time=24:00:00
#SBATCH --output={workdir}/{launch}/slurm-%A_%a.out
#SBATCH --open-mode=append
#
# FILL IN (edit here or export): the repository's path on the nodes, its Python.
REPO="${{REPO:-{repo}}}"
WORKDIR="${{WORKDIR:-{workdir}}}"
PYTHON="${{PYTHON:-{python}}}"
MODE="${{MODE:-claim}}"

set -euo pipefail
if [ "$MODE" = static ]; then
  WORKER="$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT"
else
  WORKER=claim
fi
ARGS=({args})
cd "$REPO"
exec "$PYTHON" run.py "${{ARGS[@]}}" --workdir="$WORKDIR" --config.study.worker="$WORKER"
"""


def write_launch_scripts(
    config: ml_collections.ConfigDict, workdir: str, cells: list[grid.Cell]
) -> list[str]:
  """W/launch/tpu_vm_fleet.sh and W/launch/slurm_array.sbatch: this command as study workers
  on many machines; what the user must fill in is marked at the top of each."""
  args = " ".join(shlex.quote(a) for a in _command_args(workdir)[:-1])  # --workdir: a variable
  values = dict(
      name=config.study.name,
      count=len(cells),
      last=max(len(cells) - 1, 0),
      repo=os.path.abspath(os.getcwd()),
      workdir=os.path.abspath(workdir),
      python=sys.executable,
      launch=workdir_lib.LAUNCH,
      args=args,
  )
  paths = []
  for name, template in (("tpu_vm_fleet.sh", _TPU_FLEET), ("slurm_array.sbatch", _SLURM_ARRAY)):
    path = os.path.join(workdir, workdir_lib.LAUNCH, name)
    workdir_lib.write_atomically(path, template.format(path=path, **values))
    os.chmod(path, 0o755)
    paths.append(path)
  return paths
