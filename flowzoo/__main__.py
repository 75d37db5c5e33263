"""``python -m flowzoo``: the ``flowzoo`` command."""

import sys

from flowzoo.cli import main

sys.exit(main())
