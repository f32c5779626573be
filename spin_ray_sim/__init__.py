"""Development code beside the product: stand-in fitters, simulated scale, test fixtures and scaffolding.

The product package `spin_ray` never imports this package; tests, benchmarks and Ray workers started
by them do (it is installed with spin_ray, so worker processes can import it).
"""
