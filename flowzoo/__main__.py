"""``python -m flowzoo``: the ``flowzoo`` command."""

import sys

from flowzoo.cli import main

if __name__ == "__main__":
    sys.exit(main())
