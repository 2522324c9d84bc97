import sys

from cord.cli import main

sys.exit(main())
