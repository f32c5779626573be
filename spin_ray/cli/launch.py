"""`spin-ray launch`: a whole run on Ray, the same as `python -m spin_ray.launch CONFIG.yaml`."""

from __future__ import annotations

import argparse

from spin_ray import launch as launcher


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `launch` subcommand with the launcher's own options and entry point."""
    parser = subparsers.add_parser("launch", help="run training on Ray (every mode; async uses the fitter pool)",
                                   description=launcher.__doc__)
    launcher.add_arguments(parser)
    parser.set_defaults(func=launcher.run_from_args, prog="spin-ray launch")
