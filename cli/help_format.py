"""The --help layout of the command-line tools: each option's default, and examples kept as written."""

from __future__ import annotations

import argparse


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each option's default, except where there is none (required options, flags); the
    description and the epilog (the examples) keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False or action.default == "":
            return action.help or ""
        if "default:" in (action.help or "") or "(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
