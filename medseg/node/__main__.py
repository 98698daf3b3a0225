"""``python -m medseg.node``: the same as ``medseg-listen``."""

import sys

from medseg.node.listen import main

sys.exit(main())
