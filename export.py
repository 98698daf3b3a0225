"""Export a trained model for deployment: ``python export.py ...`` (the same as ``python -m medseg.tools.export`` or
``medseg-export``; see :mod:`medseg.tools.export`). Kept at the repository root, where PaddleSeg users and
``python -m paddle.distributed.launch export.py`` look for it."""

import sys

from medseg.tools.export import main

if __name__ == "__main__":
    sys.exit(main())
