"""``python -m perfkit.semantic [--misses]``: the shipped precision/recall evaluation."""

import sys

from perfkit.semantic.evaluation import main

raise SystemExit(main(sys.argv[1:]))
