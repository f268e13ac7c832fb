"""`python -m bench [section ...]`: run the benchmarks (all sections by default)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from bench import write

SECTIONS = {"write": write.run}


def main() -> None:
    """Parse the sections to run and run them in order."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("sections", nargs="*", choices=[*SECTIONS, []], default=list(SECTIONS))
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for section in args.sections:
        kwargs = {} if args.seconds is None else {"seconds": args.seconds}
        asyncio.run(SECTIONS[section](**kwargs))


if __name__ == "__main__":
    main()
