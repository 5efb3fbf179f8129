"""The editing engine: keys, targets, covariance and the MEMIT/D4S closed form, run on a shadow of the served model."""
