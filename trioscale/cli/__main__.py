"""`python -m trioscale.cli`, as the test harnesses and benchmarks run it."""

import sys

from trioscale.cli.root import main

sys.exit(main())
