r"""Model scripts and their data.

A model script is a Python file that defines

- ``model(**data)``: a Pyro model whose keyword arguments are the keys of the data;
- optionally ``guide(**data)``: the user's own guide (``--guide custom``);
- optionally ``data()``: a function returning the data dict (a ``--data FILE`` overrides it);
- optionally ``DATA_PLATE``: the name of the plate over the observations, which the model indexes
  by the plate's indices, for minibatch and data-parallel fits (:mod:`ppl_models.vi.data_plate`).

Data values arrive converted (:func:`convert_data`): JSON numbers as Python ``int``/``float``,
(nested) lists as torch tensors, ``int64`` when every element is an integer, else the run's
float dtype. Data files are ``.json`` or ``.json.zip`` holding one JSON file (posteriordb's
format).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import inspect
import itertools
import json
import math
import os
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_COUNTER = itertools.count()


@dataclass(frozen=True)
class ModelScript:
    """A loaded model script: its ``model``, optional ``guide`` and ``data`` function, path, and
    the name of its data plate (``DATA_PLATE``) when it declares one."""

    model: Callable
    guide: Callable | None
    data: Callable[[], Mapping[str, Any]] | None
    path: Path
    module: Any = None
    data_plate: str | None = None

    def load_data(self) -> dict[str, Any]:
        """Call the script's ``data()``; a ``ValueError`` when it has none or it fails."""
        if self.data is None:
            raise ValueError(f"model script {self.path} defines no data(); pass --data FILE")
        try:
            value = self.data()
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"data() of {self.path} failed: {err}") from err
        except Exception as err:  # noqa: BLE001 - any failure of user code is reported in one line
            raise ValueError(f"data() of {self.path} raised {type(err).__name__}: {err}") from err
        if not isinstance(value, Mapping):
            raise ValueError(
                f"data() of {self.path} must return a dict, got {type(value).__name__}"
            )
        return dict(value)


def load_script(path: str | Path) -> ModelScript:
    """Import the model script at ``path`` and return its parts.

    The file is imported under a unique module name that is removed from ``sys.modules``
    afterwards, so loading two scripts (or one twice) never mixes them.

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file.
    ValueError
        When importing the script raises (the message names the exception), or the script
        defines no callable ``model``, or ``guide``/``data`` are not callable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model script not found: {path}")
    name = f"_ppl_models_script_{next(_COUNTER)}_{_identifier(path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
    try:
        spec.loader.exec_module(module)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        message = str(err).strip().splitlines()
        detail = f": {message[0]}" if message else ""
        raise ValueError(
            f"model script {path} failed to import: {type(err).__name__}{detail}"
        ) from err
    finally:
        sys.modules.pop(name, None)
    model = getattr(module, "model", None)
    if model is None or not callable(model):
        raise ValueError(f"model script {path} defines no callable `model`")
    parts = {}
    for attr in ("guide", "data"):
        value = getattr(module, attr, None)
        if value is not None and not callable(value):
            raise ValueError(f"`{attr}` in model script {path} must be callable")
        parts[attr] = value
    plate = getattr(module, "DATA_PLATE", None)
    if plate is not None and (not isinstance(plate, str) or not plate.strip()):
        raise ValueError(
            f"DATA_PLATE in model script {path} must name a plate (a non-empty string), "
            f"got {plate!r}"
        )
    return ModelScript(model, parts["guide"], parts["data"], path.resolve(), module, plate)


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def read_data_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.json`` data file, or a ``.json.zip`` holding exactly one ``.json`` file.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for any other problem
    (not JSON, not a JSON object, a zip without exactly one JSON member, an unknown suffix).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    name = path.name.lower()
    try:
        if name.endswith(".json.zip") or name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/")]
                if len(members) != 1:
                    raise ValueError(
                        f"data file {path} must hold exactly one JSON file, found "
                        f"{len(members)}: {', '.join(members) or 'none'}"
                    )
                text = archive.read(members[0]).decode("utf-8")
        elif name.endswith(".json"):
            text = path.read_text(encoding="utf-8")
        else:
            raise ValueError(f"data file {path} must be .json or .json.zip")
        value = json.loads(text)
    except zipfile.BadZipFile as err:
        raise ValueError(f"data file {path} is not a readable zip archive: {err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"data file {path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"data file {path} must hold a JSON object, got {type(value).__name__}")
    return value


def load_data(path: str | Path, *, dtype=None, device=None) -> dict[str, Any]:
    """Read a data file (:func:`read_data_file`) and convert it (:func:`convert_data`)."""
    return convert_data(read_data_file(path), dtype=dtype, device=device)


def convert_data(data: Mapping[str, Any], *, dtype=None, device=None) -> dict[str, Any]:
    """Convert data values for a model: numbers stay Python numbers, lists become tensors.

    - ``int``/``float``/``bool`` stay as they are (a NaN ``float`` is an error);
    - a (nested) list becomes a tensor on ``device``: ``int64`` when every element is an
      integer, else ``dtype`` (``torch.float64`` when ``None``);
    - tensors and NumPy arrays are moved to ``device``; floating ones are cast to ``dtype``;
    - anything else (strings, dicts) is passed through for the script to use.

    Raises
    ------
    ValueError
        When a value holds a NaN (the key is named), or a list is ragged.
    """
    import numpy as np
    import torch

    dtype = torch.float64 if dtype is None else dtype
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, bool) or isinstance(value, int):
            out[key] = value
        elif isinstance(value, float):
            if math.isnan(value):
                raise ValueError(f"data value {key!r} is NaN")
            out[key] = value
        elif isinstance(value, list | tuple):
            flat = list(_flatten(value))
            if any(isinstance(v, float) and math.isnan(v) for v in flat):
                raise ValueError(f"data value {key!r} contains NaN")
            integer = bool(flat) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in flat
            )
            try:
                tensor = torch.tensor(value, dtype=torch.int64 if integer else dtype, device=device)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"data value {key!r} is not a rectangular list of numbers: {err}"
                ) from None
            out[key] = tensor
        elif isinstance(value, torch.Tensor | np.ndarray):
            tensor = torch.as_tensor(value, device=device)
            if tensor.is_floating_point():
                if torch.isnan(tensor).any():
                    raise ValueError(f"data value {key!r} contains NaN")
                tensor = tensor.to(dtype)
            out[key] = tensor
        else:
            out[key] = value
    return out


def model_data(model: Callable, data: Mapping[str, Any], *, dtype=None, device=None) -> dict:
    """``data`` converted for ``model`` (:func:`convert_data`) and checked against its keyword
    parameters (:func:`check_data_keys`): what a fit takes. Converting converted data changes
    nothing, so a caller may check its data early and pass the result on."""
    converted = convert_data(data, dtype=dtype, device=device)
    check_data_keys(model, converted)
    return converted


def _flatten(value):
    for item in value:
        if isinstance(item, list | tuple):
            yield from _flatten(item)
        else:
            yield item


def check_data_keys(model: Callable, data: Mapping[str, Any]) -> None:
    """Check that ``data`` fits ``model``'s keyword parameters.

    A model with ``**kwargs`` takes any key. Otherwise every key must name a parameter and
    every parameter without a default must be given.

    Raises
    ------
    ValueError
        Naming each unexpected or missing key once, with the model's signature.
    """
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):
        return
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    names = [p.name for p in params]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [key for key in data if key not in names] if not takes_any else []
    missing = [p.name for p in params if p.default is p.empty and p.name not in data]
    if not (unknown or missing):
        return
    call = f"model({', '.join(names + (['**kwargs'] if takes_any else []))})"
    problems = []
    if unknown:
        problems.append(
            f"the data has {_keys(unknown)} that {call} does not take (rename "
            f"{'it' if len(unknown) == 1 else 'them'} to one of its arguments, or add "
            f"{'it' if len(unknown) == 1 else 'them'} to the model's)"
        )
    if missing:
        what = "needs" if not unknown else "also needs"
        subject = call if not unknown else "it"
        problems.append(f"{subject} {what} {_quoted(missing)}, which the data lacks")
    raise ValueError("; ".join(problems))


def _quoted(keys: list[str]) -> str:
    quoted = [f"'{k}'" for k in keys]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _keys(keys: list[str]) -> str:
    return ("the key " if len(keys) == 1 else "the keys ") + _quoted(keys)


POSTERIORDB_ENV = "PPL_MODELS_POSTERIORDB"


def posteriordb_dir() -> Path:
    """The folder of posteriordb posteriors: ``$PPL_MODELS_POSTERIORDB`` when set, else the
    four that ship inside the package (``ppl_models/data/posteriordb``)."""
    env = os.environ.get(POSTERIORDB_ENV)
    if env:
        return Path(env)
    return Path(str(importlib.resources.files("ppl_models") / "data" / "posteriordb"))


def posteriordb_file(posterior: str, name: str = "data.json.zip") -> Path:
    """The path of ``name`` in posteriordb's folder for ``posterior`` (for example
    ``"kidiq-kidscore_momiq"``); ``FileNotFoundError`` saying where it looked when absent."""
    path = posteriordb_dir() / posterior / name
    if not path.is_file():
        raise FileNotFoundError(
            f"posteriordb file not found: {path}; set {POSTERIORDB_ENV} to the folder that "
            f"holds {posterior}/ (posteriordb's posteriors) or pass --data FILE"
        )
    return path


def posteriordb_data(posterior: str) -> dict[str, Any]:
    """The data of a posteriordb posterior as read from its ``data.json.zip`` (unconverted)."""
    return read_data_file(posteriordb_file(posterior))
