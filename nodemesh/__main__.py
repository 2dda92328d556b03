"""`python -m nodemesh` is the `nodemesh` command."""

import sys

from nodemesh.cmd.main import main

sys.exit(main())
