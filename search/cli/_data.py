"""``cnnas data fetch``: getting the public datasets onto the disk."""

from __future__ import annotations

import argparse
import sys

from cnnas.objectives import fetch

__all__ = ["cmd_data_fetch"]


def cmd_data_fetch(args: argparse.Namespace) -> int:
    folder = fetch(args.name, args.dir, mirror=args.mirror, out=sys.stderr)
    where = f"data_dir: {args.dir}" if args.dir else "(no data_dir needed: the default location)"
    print(f"{args.name} is in {folder}")
    print(f"use it in a study config:\n  data:\n    dataset: {args.name}\n    {where}")
    return 0
