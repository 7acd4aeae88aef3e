"""How an error reaches a person: one line that keeps what Pyro said and says what to change.

The command line prints every expected error as one line (``ppl-models: error: ...``). Pyro's
own messages run over several lines (the site, the shapes it expected and got, the fixes it
suggests) and sometimes append a table of trace shapes; :func:`one_line` keeps the words and
drops the table. :func:`model_failure` adds what the package knows about a model that raised:
a model that leaves torch for NumPy cannot be differentiated, for instance.
"""

from __future__ import annotations

import re

# Pyro appends these tables to errors raised inside a trace; they do not fit on one line
_TABLE_STARTS = ("Trace Shapes", "Param Sites", "Sample Sites")


def one_line(text: str) -> str:
    """``text`` on one line: its lines joined by "; " (by a space after a colon) up to a
    trace-shape table, list bullets and runs of spaces removed."""
    joined = ""
    for line in str(text).strip().splitlines():
        line = line.strip()
        if line.startswith(_TABLE_STARTS):
            break
        line = re.sub(r"\s+", " ", re.sub(r"^[-*]\s+", "", line))
        if line:
            joined += ("" if not joined else " " if joined.endswith(":") else "; ") + line
    return joined


def model_failure(stage: str, err: BaseException) -> str:
    """The message for a model (or guide) that raised ``err`` during ``stage`` ("fitting",
    "diagnosis"), with advice where the cause is known."""
    message = one_line(str(err))
    if "numpy()" in message and "requires grad" in message or "does not require grad" in message:
        return (
            f"the model is not differentiable in its latent variables ({message.rstrip('.')}): "
            "SVI needs log p(x, z) computed by torch operations of z; compute the model with "
            "torch instead of NumPy, .item() or .detach()"
        )
    return f"the model raised during {stage}: {type(err).__name__}: {message}".rstrip(": ")
