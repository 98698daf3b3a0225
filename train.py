"""Train a model from a config: ``python train.py ...`` (the same as ``python -m medseg.tools.train`` or
``medseg-train``; see :mod:`medseg.tools.train`). Kept at the repository root, where PaddleSeg users and
``python -m paddle.distributed.launch train.py`` look for it."""

import sys

from medseg.tools.train import main

if __name__ == "__main__":
    sys.exit(main())
