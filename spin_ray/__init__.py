"""spin-ray: SPIN training with SMPLify fitting on Ray actors and a Redis fit store."""

__version__ = "0.1.0"
