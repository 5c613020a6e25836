"""Re-runs the pretraining run in WORKDIR from its config.json, in a process of its own, so that
test_checkpoint sees everything a resume prints up to the process's exit.

  python -m tests.train.resume_target WORKDIR
"""

import json
import os
import sys

import ml_collections

from experiments import pretrain


def main(workdir: str) -> None:
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  pretrain.run(config, workdir)


if __name__ == "__main__":
  main(sys.argv[1])
