"""``cnnas data``: getting the public datasets onto the disk.

Registered by the CLI with :func:`add_parsers`; errors are :class:`DatasetError` (exit status 2).
"""

from __future__ import annotations

import argparse
import sys

from objectives import REMOTES, default_data_dir, fetch

__all__ = ["add_parsers", "cmd_data_fetch"]


def cmd_data_fetch(args: argparse.Namespace) -> int:
    folder = fetch(args.name, args.dir, mirror=args.mirror, out=sys.stderr)
    name = args.name
    where = f"data_dir: {args.dir}" if args.dir else "(no data_dir needed: the default location)"
    print(f"{name} is in {folder}")
    print(f"use it in a study config:\n  data:\n    dataset: {name}\n    {where}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Adds ``data fetch NAME [--dir DIR] [--mirror URL]`` to the ``cnnas`` subcommands."""
    data = sub.add_parser("data", help="download the public datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch_p = data_sub.add_parser(
        "fetch",
        help="download a public dataset from its official source and verify its checksums",
        description=(
            "Download a public dataset into DIR/NAME/ and verify each file's MD5. Files "
            "already there (or, without --dir, in a system package's folder) are used."
        ),
    )
    fetch_p.add_argument(
        "name",
        metavar="NAME",
        help=f"one of: {', '.join(REMOTES)} (emnist-<split> and cifar-100-coarse also work)",
    )
    fetch_p.add_argument(
        "--dir",
        help=f"data folder to download into (default: $CNNAS_DATA_DIR or {default_data_dir()})",
    )
    fetch_p.add_argument(
        "--mirror",
        help="base URL serving NAME/FILE in place of the official hosts "
        "(default: $CNNAS_DATA_MIRROR)",
    )
    fetch_p.set_defaults(func=cmd_data_fetch)
