"""`python -m mlcache ...` is the `mlcache` command (for a venv whose bin/ is not on PATH)."""

import sys

from mlcache.cli.main import main

sys.exit(main())
