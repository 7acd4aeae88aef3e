r"""Reference posteriors to check a variational fit against.

A :class:`Reference` holds draws per site, shaped ``(chain, draw, *site_shape)``, and says where
they came from. Three sources:

- posteriordb reference draws (:func:`load_reference` on ``.json`` or ``.json.zip``): a JSON list
  of chains, each mapping ``name``, ``name[i]`` or ``name[i,j]`` (1-based, Stan's convention)
  to a list of draws; ``name[i,j]`` is element ``[i-1, j-1]`` of site ``name``;
- an ArviZ InferenceData file (:func:`load_reference` on ``.nc``): its ``posterior`` group;
- Pyro's NUTS run on the model itself (:func:`nuts_reference`).

:func:`match_sites` checks the reference's names against the model's sites.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .script import posteriordb_file
from .settings import NutsSettings

POSTERIORDB_PREFIX = "posteriordb:"

_ELEMENT = re.compile(r"^(?P<base>[^\[\]]+?)(?:\[(?P<index>[0-9]+(?:\s*,\s*[0-9]+)*)\])?$")


@dataclass
class Reference:
    """Reference draws of a posterior.

    Attributes
    ----------
    draws
        Site name -> ``(chain, draw, *site_shape)`` float64 array.
    source
        Words saying where the draws come from (shown in the report).
    notes
        Anything the report should say about them (names ignored, for instance).
    """

    draws: dict[str, np.ndarray]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def chains(self) -> int:
        return next(iter(self.draws.values())).shape[0] if self.draws else 0

    @property
    def draws_per_chain(self) -> int:
        return next(iter(self.draws.values())).shape[1] if self.draws else 0

    def shape(self, site: str) -> tuple[int, ...]:
        return tuple(self.draws[site].shape[2:])


# --------------------------------------------------------------------------- posteriordb


def _read_json(path: Path):
    if path.name.endswith(".json.zip") or path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1:
                raise ValueError(
                    f"reference file {path} must be a zip holding one JSON file, "
                    f"found {len(members)} entries"
                )
            text = archive.read(members[0]).decode("utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    return json.loads(text)


def from_posteriordb(chains, source: str = "posteriordb reference draws") -> Reference:
    """A :class:`Reference` from posteriordb's structure: a list of chains, each a dict mapping
    ``name``/``name[i]``/``name[i,j]`` (1-based) to draws.

    Raises
    ------
    ValueError
        For anything else: not a non-empty list of dicts, chains with different names or
        lengths, a name that is not ``name`` or ``name[i,...]``, non-numeric draws, or elements
        missing from a site (say ``beta[1]`` and ``beta[3]`` without ``beta[2]``).
    """
    expected = "a list of chains, each mapping 'name', 'name[i]' or 'name[i,j]' to a list of draws"
    if not isinstance(chains, list) or not chains or not all(isinstance(c, dict) for c in chains):
        raise ValueError(f"{source}: expected {expected}")
    keys = list(chains[0])
    if not keys:
        raise ValueError(f"{source}: the first chain holds no names; expected {expected}")
    for i, chain in enumerate(chains):
        if set(chain) != set(keys):
            raise ValueError(
                f"{source}: chain {i + 1} has names {sorted(chain)}, chain 1 has {sorted(keys)}"
            )
    notes = []
    internal = [k for k in keys if k.endswith("__")]
    if internal:
        notes.append(f"Sampler quantities {', '.join(internal)} in the reference were ignored.")
    sites: dict[str, dict[tuple[int, ...], str]] = {}
    for key in keys:
        if key in internal:
            continue
        m = _ELEMENT.match(key.strip())
        if not m:
            raise ValueError(f"{source}: name {key!r} is not 'name', 'name[i]' or 'name[i,j]'")
        index = tuple(int(i) for i in m["index"].split(",")) if m["index"] else ()
        if any(i < 1 for i in index):
            raise ValueError(f"{source}: name {key!r} has an index below 1 (indices are 1-based)")
        elements = sites.setdefault(m["base"], {})
        if elements and len(next(iter(elements))) != len(index):
            raise ValueError(f"{source}: site {m['base']!r} mixes index depths ({key!r})")
        elements[index] = key
    draws = {}
    for base, elements in sites.items():
        shape = tuple(max(ix[d] for ix in elements) for d in range(len(next(iter(elements)))))
        if len(elements) != math.prod(shape):
            missing = [
                f"{base}[{','.join(str(i + 1) for i in ix)}]"
                for ix in np.ndindex(*shape)
                if tuple(i + 1 for i in ix) not in elements
            ]
            raise ValueError(
                f"{source}: site {base!r} has shape {shape} but lacks {', '.join(missing[:5])}"
            )
        per_chain = []
        for c, chain in enumerate(chains):
            lengths = {
                len(chain[k]) if isinstance(chain[k], list) else -1 for k in elements.values()
            }
            if len(lengths) != 1 or -1 in lengths:
                raise ValueError(
                    f"{source}: chain {c + 1} of site {base!r} does not hold equal-length lists "
                    "of draws"
                )
            n = lengths.pop()
            arr = np.empty((n, *shape), dtype=np.float64)
            for ix, key in elements.items():
                try:
                    arr[(slice(None), *(i - 1 for i in ix))] = np.asarray(
                        chain[key], dtype=np.float64
                    )
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{source}: the draws of {key!r} in chain {c + 1} are not numbers"
                    ) from None
            per_chain.append(arr)
        if len({a.shape[0] for a in per_chain}) != 1:
            raise ValueError(f"{source}: the chains of site {base!r} have different lengths")
        draws[base] = np.stack(per_chain)
    return Reference(draws=draws, source=source, notes=notes)


def _load_netcdf(path: Path) -> Reference:
    from .. import diagnostics

    idata = diagnostics.load(path)
    if "posterior" not in idata.groups():
        raise ValueError(
            f"reference file {path} has no 'posterior' group (groups: {idata.groups()})"
        )
    posterior = idata.posterior
    draws = {
        name: np.asarray(posterior[name].values, dtype=np.float64) for name in posterior.data_vars
    }
    if not draws:
        raise ValueError(f"reference file {path}: its posterior group holds no variables")
    return Reference(draws=draws, source=f"InferenceData file {path} (posterior group)")


def load_reference(path: str | Path) -> Reference:
    """Read reference draws from a file.

    Parameters
    ----------
    path
        posteriordb reference draws (``.json`` or ``.json.zip``: a list of chains, each mapping
        ``name``, ``name[i]``, ``name[i,j]`` (1-based) to draws), an ArviZ InferenceData
        ``.nc`` file (its ``posterior`` group, variables shaped ``(chain, draw, *shape)``), or
        ``posteriordb:NAME``: the reference draws of posteriordb's posterior ``NAME`` (four ship
        with the package; :func:`ppl_models.vi.script.posteriordb_dir`).

    Returns
    -------
    Reference

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        For an unknown suffix, or a corrupt or unreadable file; the message names the file and
        what was expected.
    """
    if str(path).startswith(POSTERIORDB_PREFIX):
        path = posteriordb_file(str(path)[len(POSTERIORDB_PREFIX) :], "reference_draws.json.zip")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    name = path.name.lower()
    if name.endswith(".nc"):
        try:
            return _load_netcdf(path)
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - netCDF/HDF5 raise many types for bad files
            raise ValueError(
                f"reference file {path} is not a readable ArviZ InferenceData (.nc) file: {err}"
            ) from None
    if name.endswith(".json") or name.endswith(".json.zip") or name.endswith(".zip"):
        try:
            chains = _read_json(path)
        except ValueError as err:
            if "must be a zip holding" in str(err):
                raise
            raise ValueError(
                f"reference file {path} is not valid JSON (expected posteriordb reference "
                f"draws: a list of chains mapping names to draws): {err}"
            ) from None
        except (zipfile.BadZipFile, UnicodeDecodeError, OSError) as err:
            raise ValueError(
                f"reference file {path} is not a readable .json.zip (expected a zip holding "
                f"one JSON file of posteriordb reference draws): {err}"
            ) from None
        return from_posteriordb(chains, source=f"posteriordb reference draws {path}")
    raise ValueError(
        f"reference file {path} must end in .json, .json.zip or .nc (posteriordb draws or "
        "ArviZ InferenceData)"
    )


# --------------------------------------------------------------------------- matching


def match_sites(reference: Reference, site_shapes: dict[str, tuple[int, ...]]) -> Reference:
    """The reference restricted to, and shaped like, the model's sites.

    Parameters
    ----------
    site_shapes
        The model's latent and deterministic sites and their shapes.

    Raises
    ------
    ValueError
        When a reference name matches no site (the message lists both), when a site's
        reference draws hold a different number of elements than the site, or when they hold
        NaN or infinite values (a corrupt reference: its moments would be NaN, and a NaN must
        never pass a check).
    """
    unknown = [name for name in reference.draws if name not in site_shapes]
    if unknown:
        raise ValueError(
            f"reference names {', '.join(unknown)} match no site of the model; reference names: "
            f"{', '.join(reference.draws)}; model sites: {', '.join(site_shapes) or '(none)'}"
        )
    draws = {}
    for name, values in reference.draws.items():
        shape = tuple(site_shapes[name])
        if values.shape[2:] != shape:
            if math.prod(values.shape[2:]) != math.prod(shape):
                raise ValueError(
                    f"reference draws of {name!r} have shape {values.shape[2:]}, the model's "
                    f"site has shape {shape}"
                )
            values = values.reshape(*values.shape[:2], *shape)
        bad = int(np.size(values) - np.isfinite(values).sum())
        if bad:
            raise ValueError(
                f"reference draws of {name!r} hold {bad} NaN or infinite values of "
                f"{np.size(values)}: the reference ({reference.source}) is corrupt"
            )
        draws[name] = values
    return Reference(draws=draws, source=reference.source, notes=list(reference.notes))


# --------------------------------------------------------------------------- NUTS


def _init_uniform(site, radius: float = 2.0, dtype=None):
    """Pyro's ``init_to_uniform`` that also works on flat priors (``ImproperUniform`` cannot
    be sampled): a uniform point in ``(-radius, radius)`` of the unconstrained space, in
    ``dtype`` (the data's float dtype) where the prior has none to give."""
    import torch
    from torch.distributions import transform_to

    fn = site["fn"]
    t = transform_to(fn.support)
    try:
        u = t.inv(fn.sample().detach())
    except NotImplementedError:  # flat priors
        shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
        u = torch.zeros(t.inverse_shape(shape), dtype=dtype or torch.get_default_dtype())
    value = t(torch.rand_like(u) * (2 * radius) - radius)
    value._pyro_custom_init = False
    return value


def nuts_reference(
    model: Callable,
    data: dict,
    *,
    warmup: int = NutsSettings.warmup,
    draws: int = NutsSettings.draws,
    chains: int = NutsSettings.chains,
    seed: int = 0,
    jit: bool = True,
    full_mass: bool = True,
    max_plate_nesting: int | None = None,
    progress: bool = False,
) -> Reference:
    """Reference draws from Pyro's NUTS run on ``model(**data)``.

    Parameters
    ----------
    warmup, draws, chains
        Warm-up steps and kept draws per chain; the chains run one after the other on the
        CPU's process (no multiprocessing), each from its own seed ``seed + chain``.
    jit
        Compile the potential energy with the PyTorch JIT (``jit_compile=True``).
    full_mass
        Adapt a dense mass matrix (the default): correlated posteriors such as a regression's
        intercept and slope otherwise need trees of a thousand leapfrog steps (kidiq: 330 s
        for 1,000 iterations with a diagonal mass matrix).

    Returns
    -------
    Reference
        Draws of every latent site and every ``pyro.deterministic`` site (recomputed by running
        the model on each draw), ``(chains, draws, *site_shape)``.
    """
    import torch
    from pyro import poutine
    from pyro.infer import MCMC, NUTS

    if min(warmup, 0) < 0 or draws < 1 or chains < 1:
        raise ValueError(
            f"NUTS needs warmup >= 0, draws >= 1, chains >= 1; got {warmup}, {draws}, {chains}"
        )
    start = time.perf_counter()
    per_chain = []
    # a flat prior's initial value takes the data's float dtype (float64 data, float32 default)
    float_dtype = next(
        (v.dtype for v in data.values() if torch.is_tensor(v) and v.is_floating_point()), None
    )
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation notice
        for chain in range(chains):
            torch.manual_seed(seed + chain)
            kernel = NUTS(
                model,
                jit_compile=jit,
                ignore_jit_warnings=True,
                init_strategy=functools.partial(_init_uniform, dtype=float_dtype),
                full_mass=full_mass,
                max_plate_nesting=max_plate_nesting,
            )
            mcmc = MCMC(
                kernel,
                num_samples=draws,
                warmup_steps=warmup,
                num_chains=1,
                disable_progbar=not progress,
            )
            mcmc.run(**data)
            per_chain.append(
                {k: v.detach().to("cpu", torch.float64) for k, v in mcmc.get_samples().items()}
            )
    names = list(per_chain[0])
    result = {k: np.stack([c[k].numpy() for c in per_chain]) for k in names}
    # deterministic sites: run the model on each draw (conditioned), recording them
    with torch.no_grad():
        trace = poutine.trace(poutine.condition(model, {k: per_chain[0][k][0] for k in names}))
        det = [
            n
            for n, s in trace.get_trace(**data).nodes.items()
            if s["type"] == "sample" and s.get("infer", {}).get("_deterministic")
        ]
        if det:
            values = {n: [] for n in det}
            for c in per_chain:
                for i in range(draws):
                    cond = poutine.condition(model, {k: c[k][i] for k in names})
                    nodes = poutine.trace(cond).get_trace(**data).nodes
                    for n in det:
                        values[n].append(nodes[n]["value"].detach().to("cpu", torch.float64))
            for n in det:
                stacked = torch.stack(values[n]).numpy()
                result[n] = stacked.reshape(chains, draws, *stacked.shape[1:])
    seconds = time.perf_counter() - start
    return Reference(
        draws=result,
        source=(
            f"Pyro NUTS: {chains} chain(s) x {draws} draws after {warmup} warm-up steps, "
            f"seed {seed}, {'jit' if jit else 'no jit'}, "
            f"{'dense' if full_mass else 'diagonal'} mass matrix, {seconds:.1f} s"
        ),
    )
