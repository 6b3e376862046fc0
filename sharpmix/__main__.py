"""``python -m sharpmix``: the ``sharpmix`` command."""

from __future__ import annotations

import sys

from sharpmix.cli import main

if __name__ == "__main__":
    sys.exit(main())
