"""``python -m mirrord_core.cli``: the CLI without the console script (how agents start)."""

import sys

from mirrord_core.cli.main import main

sys.exit(main())
