"""``python -m selfnorm`` runs the command line."""

import sys

from selfnorm.cli import main

sys.exit(main())
