"""``python -m churnops.cli``: the same as the ``churnops`` command."""

import sys

from churnops.cli import main

sys.exit(main())
