"""Simulated scale: a fake autoscaling Ray cluster and cost-model runs of the fitter pool."""
