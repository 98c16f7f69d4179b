"""``python -m gnflow`` runs the command line."""

import sys

from gnflow.cli import main

sys.exit(main())
