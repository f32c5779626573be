"""Batched SMPLify: the fitting core, its priors, the open pose prior and offline static fits."""
