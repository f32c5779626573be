"""`python -m spin_ray.launch CONFIG.yaml`: a whole run on Ray, locally or on a cluster (spin_ray/cli/launch.py)."""

from __future__ import annotations

from spin_ray.cli import exit_with
from spin_ray.cli.launch import main

if __name__ == "__main__":
    exit_with(main())
