"""medseg: a PaddlePaddle framework for intracranial-hemorrhage detection on head CT.

The package reads in the order data flows: ``dicom`` (reading) → ``data`` (Kaggle tables, split,
cache, dataset, transforms) → ``models`` → ``engine`` (losses, metrics, trainer, evaluator,
checkpoints, distributed) → ``outputs`` (CSV, submission, ensemble, report) → ``semi``,
``predict``, ``export``.
"""

__version__ = "0.1.0"

import warnings as _warnings

# Paddle's C++-extension helper warns about a missing ccache on every import; we never build
# extensions, so keep logs clean of it.
_warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
# Paddle's BatchNorm warns on every training forward that it tracks running statistics, which is
# simply what BatchNorm does.
_warnings.filterwarnings("ignore", message="When training, we now always track global mean", category=UserWarning)
