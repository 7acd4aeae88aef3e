"""Fit and diagnose any Pyro model: model scripts, autoguides with a robust initialisation,
the fitting call, and the log-weight diagnosis of the fitted guide."""
