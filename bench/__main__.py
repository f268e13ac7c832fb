"""`python -m bench [section ...]`: run the benchmarks (all sections by default)."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging

from bench import http, migrate, queue, reads, write

SECTIONS = {
    "write": write.run,
    "reads": reads.run,
    "queue": queue.run,
    "http": http.run,
    "migrate": migrate.run,
}


def main() -> None:
    """Parse the sections to run and run them in order."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("sections", nargs="*", choices=[*SECTIONS, []], default=list(SECTIONS))
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement")
    parser.add_argument(
        "--scale", type=float, default=None, help="data size factor (reads, queue, migrate)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    options = {"seconds": args.seconds, "scale": args.scale}
    for section in args.sections:
        # Each section gets the options it takes.
        accepted = inspect.signature(SECTIONS[section]).parameters
        kwargs = {k: v for k, v in options.items() if v is not None and k in accepted}
        asyncio.run(SECTIONS[section](**kwargs))


if __name__ == "__main__":
    main()
