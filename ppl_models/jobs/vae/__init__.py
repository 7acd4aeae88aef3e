"""Train the MNIST VAE by SVI, evaluate it on held-out images and report its amortized posterior.

Model p(z) p(x | z) with z ~ N(0, I) and a pixel likelihood (normal, normal with a learned scale,
or Bernoulli), guide q(z | x) a diagonal Normal from an encoder (the seed notebook's
convolutional networks or Pyro's 784-400-50 MLP). Adam on Pyro's Trace_ELBO (or
TraceMeanField_ELBO) through the shared loop, one checkpoint per epoch, ``--resume RUN_DIR`` to
continue. The run writes the run-directory contract of :mod:`ppl_models.runs` plus
``checkpoint.pt`` and ``evaluation.npz``; the report is rebuilt from those files alone.
"""

# The job's modules: ``config`` (VaeConfig and the job's constants) and ``command`` (argparse,
# main), both torch-free; ``train`` (data, networks, checkpoints, the epoch loop,
# execute/resume/finish); ``report`` (summary, verdict, tables, figures, the page) and
# ``gaps_report`` (the report's section for a two-dimensional latent). The package holds what
# ppl_models.cli needs of a job (add_arguments, main, rebuild_report; its docstring is the
# command's --help) and imports no torch until rebuild_report is asked for.

from __future__ import annotations

from .command import add_arguments, main

__all__ = ["add_arguments", "main", "rebuild_report"]


def __getattr__(name: str):
    if name == "rebuild_report":  # it reads the run's arrays with torch: imported on first use
        from .report import rebuild_report

        return rebuild_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
