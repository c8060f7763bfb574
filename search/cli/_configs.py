"""``cnnas config list`` and ``cnnas config show``: the presets shipped with cnnas."""

from __future__ import annotations

import argparse

from .._config import describe_presets, load_config, load_preset, to_yaml
from ..errors import UsageError

__all__ = ["cmd_config_list", "cmd_config_show"]


def cmd_config_list(args: argparse.Namespace) -> int:
    presets = describe_presets()
    width = max(len(name) for name in presets)
    for name, summary in presets.items():
        print(f"{name:<{width}}  {summary}")
    print("\nrun one: cnnas study start --preset NAME; edit one: cnnas config show --preset NAME")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    if args.preset and args.config:
        raise UsageError("--config and --preset name two configs; give one of them")
    if args.preset:
        cfg, source = load_preset(args.preset), f"preset {args.preset}"
    elif args.config:
        cfg, source = load_config(args.config), args.config
    else:
        cfg, source = load_config(None), "the built-in defaults"
    print(to_yaml(cfg, header=f"cnnas study config: {source}, every key with its value"))
    return 0
