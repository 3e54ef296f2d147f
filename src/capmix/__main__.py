"""``python -m capmix ...``: the ``capmix`` command without its console script."""

import sys

from capmix.cli import main

sys.exit(main())
