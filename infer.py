"""Predict one prepared split with a trained model: ``python infer.py ...`` (the same as ``python -m medseg.tools.infer`` or
``medseg-infer``; see :mod:`medseg.tools.infer`). Kept at the repository root, where PaddleSeg users and
``python -m paddle.distributed.launch infer.py`` look for it."""

import sys

from medseg.tools.infer import main

if __name__ == "__main__":
    sys.exit(main())
