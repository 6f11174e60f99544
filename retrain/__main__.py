"""``python -m retrain``: the command line (retrain/cli.py)."""
import sys

from .cli import main

sys.exit(main())
