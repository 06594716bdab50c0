"""`python -m labs ...`: the same command line as the `labs` script."""
import sys

from labs.cli import main

sys.exit(main())
