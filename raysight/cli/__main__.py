"""`python -m raysight.cli ...`: the same as the `raysight` command."""

import sys

from raysight.cli import main

sys.exit(main())
