"""`python -m minifcn.bench`: the same as `minifcn bench` (and how its workers start)."""
import sys

from .command import cli

sys.exit(cli())
