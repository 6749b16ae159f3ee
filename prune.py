#!/usr/bin/env python3
"""Thin entry point: `python prune.py ...` is `goodnet prune ...`."""

import sys

from goodnet.cli import main

if __name__ == "__main__":
    sys.exit(main(prog_command="prune"))
