"""``python -m cord.cli`` (what ``cord reproduce`` and ``accelerate launch -m cord.cli`` run)."""

import sys

from cord.cli import main

sys.exit(main())
