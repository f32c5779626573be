"""Ray actors: the trainer actor, the fitter pool and the prediction stream."""
