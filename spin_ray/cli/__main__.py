"""`python -m spin_ray.cli`: the same as the `spin-ray` console script."""

from spin_ray.cli import run

run()
