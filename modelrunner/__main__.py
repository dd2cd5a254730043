"""`python -m modelrunner` is the CLI."""

import sys

from modelrunner.cli.main import main

sys.exit(main())
