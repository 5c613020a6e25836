"""Tables and plots of a study's finished cells (also written at the end of every study):

python run.py --config=configs/report.py --workdir=workdirs/study
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return ml_collections.ConfigDict(dict(experiment="report"))
