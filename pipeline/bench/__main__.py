"""`python -m pipeline.bench all [--device cpu] [--steps N] [--out FILE]`: the whole benchmark suite in one process.

See `pipeline.bench.suite`; the parts also run alone as `python -m pipeline.bench.<part>`.
"""

import argparse
import os
from pathlib import Path

from pipeline.bench.options import at_least_one


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.bench",
        description="The whole benchmark suite in one process: one table, one JSON file.",
    )
    parser.add_argument("what", choices=["all"], help="the figures to measure: all of them")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto", help="cpu: ignore any GPU (a rehearsal)")
    parser.add_argument(
        "--steps", type=at_least_one, default=30, help="timed steps per training case (median reported)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file the figures are written to")
    args = parser.parse_args()
    if args.out is not None and not os.access(args.out.parent, os.W_OK):  # found now, not after minutes of work
        parser.error(f"--out: expected a file in a writable folder, got {args.out}")
    if args.device == "cpu":
        # Before torch looks for a GPU: every part then picks the CPU and its small shapes.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from pipeline.bench import suite

    suite.run(args.steps, args.out)


if __name__ == "__main__":
    main()
