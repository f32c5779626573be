"""`python -m spin_ray.cli`: the same as the `spin-ray` console script."""

import sys

from spin_ray.cli import main

sys.exit(main())
