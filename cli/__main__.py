"""`python -m cli ...`: the same as the `conveyor` console script."""

import sys

from cli.main import main

sys.exit(main())
