"""The documentation's structure, checked without building it (``make docs`` builds and executes).

- Every entry of every ``{toctree}`` resolves to a page, and every tutorial and API page is
  listed in one.
- Every tutorial is a MyST notebook (Jupytext front matter, ``python3`` kernel, code cells), so
  MyST-NB executes it rather than rendering it as plain text, and it reads
  ``PPL_MODELS_DOCS_MODE`` if it computes anything expensive.
- Tutorials use the public API: no ``ppl_models`` name starting with ``_``.
- The API reference covers the package. The approach: no API page is kept by hand; the one
  ``autosummary`` directive of ``docs/api/index.md`` (``:recursive:``, ``:toctree:``) makes
  Sphinx write a page per module into the git-ignored ``docs/api/generated`` at every build, from
  ``docs/_templates/autosummary/module.rst``. The tests run that same generation (autosummary's
  own code, with ``conf.py``'s templates) into a temporary folder and check the pages it writes,
  made of ``.. automodule::`` directives: every module of the package (found by walking
  ``ppl_models``) gets exactly one page and one ``automodule`` (a duplicate would be a Sphinx
  warning), and every page is in a toctree. A module's public functions and classes are the
  names in its namespace that do not start with ``_`` and whose ``__module__`` is the module
  itself (so re-exports count once, where they are defined); its ``automodule`` must have
  ``:members:`` and ``:undoc-members:`` (and ``:ignore-module-all:`` where the module has an
  ``__all__``, which would otherwise document its re-exports again) and must not exclude any of
  them; that is the set autodoc renders. A separate test asks that each of those names has a
  docstring of its own, since ``:undoc-members:`` would otherwise list it without a word.
- Every ``{func}``/``{mod}``/``{class}``... reference of a page to ``ppl_models`` names an object
  that exists, so moving a module cannot leave a dead link behind (Sphinx renders an
  unresolved Python reference as plain text, without a warning).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import ppl_models

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIALS = DOCS / "tutorials"
API = DOCS / "api"
SOURCE_SUFFIXES = (".md", ".rst", ".ipynb")
REQUIRED_TUTORIALS = (
    "01-vi-by-hand",
    "02-fitting-with-pyro",
    "03-monte-carlo-kl",
    "04-vae-mnist",
    "05-reading-a-report",
)
TOCTREE = re.compile(r"```\{toctree\}\n(.*?)```", re.S)
AUTOMODULE = re.compile(r"^\.\. automodule:: *(\S+)\s*\n((?:[ \t]+:.*\n?)*)", re.M)
AUTOSUMMARY = re.compile(r"^( *)\.\. autosummary::[ \t]*\n((?:\1[ \t]+\S.*\n|[ \t]*\n)*)", re.M)
API_ROLE = re.compile(r"\{(?:py:)?(?:func|mod|class|meth|data|attr|obj|exc)\}`([^`]+)`")


# ----------------------------------------------------------------------------- table of contents


def toctree_entries() -> dict[Path, list[str]]:
    """Each MyST page with toctrees -> the entries listed in them (options and blanks dropped)."""
    found = {}
    for page in DOCS.rglob("*.md"):
        if "_build" in page.parts or "jupyter_execute" in page.parts:
            continue
        entries = []
        for body in TOCTREE.findall(page.read_text()):
            entries += [
                line.strip()
                for line in body.splitlines()
                if line.strip() and not line.strip().startswith(":")
            ]
        if entries:
            found[page] = entries
    return found


def resolve(page: Path, entry: str) -> Path | None:
    base = page.parent / entry
    for candidate in (base, *(base.with_name(base.name + s) for s in SOURCE_SUFFIXES)):
        if candidate.is_file() and candidate.suffix in SOURCE_SUFFIXES:
            return candidate
    return None


def listed_pages() -> set[Path]:
    return {
        resolve(page, entry) for page, entries in toctree_entries().items() for entry in entries
    }


def test_every_toctree_entry_exists():
    missing = [
        f"{page.relative_to(DOCS)}: {entry}"
        for page, entries in toctree_entries().items()
        for entry in entries
        if resolve(page, entry) is None
    ]
    assert not missing, f"toctree entries without a page: {missing}"


def test_required_pages_are_in_the_table_of_contents():
    listed = listed_pages()
    required = [TUTORIALS / f"{name}.md" for name in REQUIRED_TUTORIALS]
    required += [DOCS / "getting-started.md", DOCS / "benchmarks.md", API / "index.md"]
    missing = [str(p.relative_to(DOCS)) for p in required if p not in listed]
    assert not missing, f"pages missing from the table of contents: {missing}"


def test_every_tutorial_and_api_page_is_listed(api_pages):
    listed = listed_pages()
    orphans = [str(p.relative_to(DOCS)) for p in TUTORIALS.glob("*.md") if p not in listed]
    # an API page is listed by the autosummary :toctree: of the index or of its package's page
    listed_modules = set()
    for page in [API / "index.md", *api_pages.glob("*.rst")]:
        for module, entries, options in autosummary_directives(page.read_text()):
            if "toctree" in options:
                listed_modules.update(f"{module}.{e}" if module else e for e in entries)
    orphans += [p.name for p in api_pages.glob("*.rst") if p.stem not in listed_modules]
    assert not orphans, f"pages no toctree lists: {orphans}"


# ----------------------------------------------------------------------------- tutorials


def tutorial_pages() -> list[Path]:
    return sorted(TUTORIALS.glob("*.md")) + [DOCS / "getting-started.md"]


def code_cells(text: str) -> list[str]:
    return re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, re.S)


@pytest.mark.parametrize("page", tutorial_pages(), ids=lambda p: p.name)
def test_tutorials_are_executable_notebooks(page):
    text = page.read_text()
    front = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert front, f"{page.name}: no front matter, so MyST-NB would not execute it"
    assert "format_name: myst" in front.group(1), f"{page.name}: no jupytext myst format"
    assert re.search(r"kernelspec:.*\n(?:\s+.*\n)*?\s+name: python3\b", front.group(1) + "\n"), (
        f"{page.name}: the kernelspec must be python3"
    )
    assert code_cells(text), f"{page.name}: no code cells to execute"


@pytest.mark.parametrize("page", sorted(TUTORIALS.glob("*.md")), ids=lambda p: p.name)
def test_every_tutorial_offers_itself_as_a_notebook(page):
    # tutorial 06 had no link; conf.py writes tutorials/_ipynb/NAME.ipynb for every page
    link = f"{{download}}`Download this page as a Jupyter notebook <_ipynb/{page.stem}.ipynb>`"
    head = page.read_text().split("```{code-cell}", 1)[0]
    assert link in head, f"{page.name}: no download link before its first cell"


@pytest.mark.parametrize("page", sorted(TUTORIALS.glob("*.md")), ids=lambda p: p.name)
def test_expensive_tutorials_read_the_docs_mode(page):
    code = "\n".join(code_cells(page.read_text()))
    expensive = re.search(r"\b(execute|fit|train|train_vae|run_notebook_loop)\(", code)
    if expensive:
        assert "PPL_MODELS_DOCS_MODE" in code, (
            f"{page.name} trains or fits but ignores PPL_MODELS_DOCS_MODE (smoke builds)"
        )


def imported_names(code: str) -> dict[str, str]:
    """Local name -> imported name, for every ``import``/``from ... import`` of ``ppl_models``."""
    names = {}
    for module, alias in re.findall(r"^\s*import (ppl_models[\w.]*)(?: as (\w+))?", code, re.M):
        names[alias or module.split(".")[0]] = module
    for clause in re.findall(r"^\s*from ppl_models[\w.]* import (\([^)]*\)|[^\n]*)", code, re.M):
        for item in clause.strip("()").replace("\n", " ").split(","):
            parts = item.split("#")[0].split()
            if parts:
                names[parts[-1]] = parts[0]
    return names


@pytest.mark.parametrize("page", tutorial_pages(), ids=lambda p: p.name)
def test_tutorials_use_only_public_names(page):
    code = "\n".join(code_cells(page.read_text()))
    names = imported_names(code)
    private = [name for name in names.values() if name.split(".")[-1].startswith("_")]
    private += re.findall(r"\bppl_models(?:\.\w+)*\._\w+", code)
    for local in names:
        attributes = re.findall(rf"\b{re.escape(local)}\.(_\w+)", code)
        private += [f"{local}.{attr}" for attr in attributes]
    assert names or "ppl_models" in code, f"{page.name} does not use the package"
    assert not private, f"{page.name} uses private names: {sorted(set(private))}"


# ----------------------------------------------------------------------------- API reference


def package_modules() -> list[str]:
    names = [ppl_models.__name__]
    names += [m.name for m in pkgutil.walk_packages(ppl_models.__path__, "ppl_models.")]
    return [name for name in names if not name.endswith("__main__")]


def public_objects(module_name: str) -> dict[str, object]:
    module = importlib.import_module(module_name)
    return {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module_name
    }


def load_conf():
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def autosummary_directives(text: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """(current module, entries, options) of each ``.. autosummary::`` in reST text; the current
    module is the last ``automodule`` above it (entries are named relative to it)."""
    found = []
    for match in AUTOSUMMARY.finditer(text):
        above = AUTOMODULE.findall(text[: match.start()])
        options, entries = {}, []
        for line in match.group(2).splitlines():
            option = re.match(r"\s+:([\w-]+):\s*(.*)", line)
            if option:
                options[option.group(1)] = option.group(2).strip()
            elif line.strip():
                entries.append(line.strip())
        found.append((above[-1][0] if above else "", entries, options))
    return found


@pytest.fixture(scope="module")
def api_pages(tmp_path_factory) -> Path:
    """The API pages as the build writes them: autosummary's generation run on docs/api/index.md
    with conf.py's templates and settings, into a temporary folder."""
    from sphinx.ext.autosummary.generate import DummyApplication, generate_autosummary_docs
    from sphinx.locale import get_translator

    conf = load_conf()
    app = DummyApplication(get_translator())
    app.config.templates_path.extend(str(DOCS / path) for path in conf.templates_path)
    app.config.autosummary_ignore_module_all = conf.autosummary_ignore_module_all
    out = tmp_path_factory.mktemp("api")
    generate_autosummary_docs([str(API / "index.md")], output_dir=out, app=app)
    return out


def automodule_directives(folder: Path) -> list[tuple[str, str, set[str], set[str]]]:
    """(page, module, option names, excluded members) for every automodule in the pages."""
    found = []
    for page in sorted(folder.glob("*.rst")):
        for module, block in AUTOMODULE.findall(page.read_text()):
            options, excluded = set(), set()
            for line in block.splitlines():
                match = re.match(r"\s+:([\w-]+):\s*(.*)", line)
                if match:
                    options.add(match.group(1))
                    if match.group(1) == "exclude-members":
                        excluded.update(n.strip() for n in match.group(2).split(","))
            found.append((page.name, module, options, excluded))
    return found


def test_api_pages_are_generated_not_kept_by_hand():
    conf = load_conf()
    assert "sphinx.ext.autosummary" in conf.extensions and conf.autosummary_generate is True
    hand_made = [p.name for p in API.iterdir() if p.name not in ("index.md", "generated")]
    assert not hand_made, f"docs/api holds only index.md; pages are generated, found {hand_made}"
    directives = [
        (entries, options.get("toctree"), "recursive" in options)
        for _, entries, options in autosummary_directives((API / "index.md").read_text())
    ]
    assert directives == [(["ppl_models"], "generated", True)], (
        "api/index.md must hold one recursive autosummary of the package, written to generated/"
    )
    assert conf.API_PAGES == API / "generated"
    assert "api/generated/" in (DOCS / ".gitignore").read_text().splitlines(), (
        "the generated API pages must be ignored by git"
    )


def test_every_module_has_one_generated_page(api_pages):
    documented = [module for _, module, _, _ in automodule_directives(api_pages)]
    duplicates = sorted({m for m in documented if documented.count(m) > 1})
    assert not duplicates, f"modules documented twice (duplicate object warnings): {duplicates}"
    unknown = sorted(set(documented) - set(package_modules()))
    assert not unknown, f"automodule of modules that do not exist: {unknown}"
    missing = sorted(set(package_modules()) - set(documented))
    assert not missing, f"modules without an API page: {missing}"
    pages = sorted(p.stem for p in api_pages.glob("*.rst"))
    assert pages == sorted(package_modules()), "one page per module, named after it"


def test_api_reference_covers_every_public_name(api_pages):
    directives = {
        module: (page, options, excluded)
        for page, module, options, excluded in automodule_directives(api_pages)
    }
    problems = []
    for module_name in package_modules():
        names = public_objects(module_name)
        if module_name not in directives:
            problems.append(f"{module_name}: no automodule page documents {sorted(names)}")
            continue
        page, options, excluded = directives[module_name]
        required = ["members", "undoc-members"]
        if hasattr(importlib.import_module(module_name), "__all__"):
            required.append("ignore-module-all")
        for option in required:
            if option not in options:
                problems.append(f"{page}: automodule {module_name} lacks :{option}:")
        hidden = sorted(set(names) & excluded)
        if hidden:
            problems.append(f"{page}: {module_name} excludes public names {hidden}")
    assert not problems, "\n".join(problems)


def test_package_pages_list_their_reexports():
    """Each name a module exports (``__all__``) but another module defines is listed on its page
    (the template's ``reexports`` directive), with a module that holds that very object."""
    spec = importlib.util.spec_from_file_location("api_pages", DOCS / "_ext" / "api_pages.py")
    api_pages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_pages)
    checked = 0
    for module_name in package_modules():
        module = importlib.import_module(module_name)
        listed = {name: home for name, _, home, _ in api_pages.reexports(module)}
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if name in listed:
                home = importlib.import_module(listed[name])
                assert home is not module and getattr(home, name) is value, (
                    f"{module_name}.{name} is listed as coming from {listed[name]}"
                )
                checked += 1
            elif inspect.isclass(value) or inspect.isfunction(value):
                assert value.__module__ == module_name, f"{module_name}.{name} is not listed"
            else:
                assert api_pages.defines(module, name), f"{module_name}.{name} is not listed"
    assert checked >= 6, "ppl_models re-exports the six functions of the public API"


def api_object(target: str):
    """The module or object a dotted name points at, or None when there is none."""
    parts = target.split(".")
    for stop in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:stop]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[stop:]:
            obj = getattr(obj, attribute, None)
        return obj
    return None


def test_references_to_the_api_name_existing_objects():
    dead = []
    for page in sorted(DOCS.rglob("*.md")):
        if {"_build", "jupyter_execute", "_generated"} & set(page.parts):
            continue
        for text in API_ROLE.findall(page.read_text()):
            target = re.sub(r".*<(.*)>$", r"\1", text).lstrip("~!")
            if target.startswith("ppl_models") and api_object(target) is None:
                dead.append(f"{page.relative_to(DOCS)}: {target}")
    assert not dead, f"references to names the package does not have: {dead}"


def own_docstring(obj) -> str:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    doc = (doc or "").strip()
    # a dataclass without a docstring gets its signature as __doc__: that documents nothing
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""
    return doc


def test_every_public_name_has_a_docstring():
    missing = [
        f"{module_name}.{name}"
        for module_name in package_modules()
        for name, obj in public_objects(module_name).items()
        if not own_docstring(obj)
    ]
    assert not missing, (
        "public functions and classes without a docstring (the API reference lists them "
        f"empty): {missing}"
    )


# ----------------------------------------------------------------------------- tutorial helpers


def test_mnist_is_found_from_the_environment_the_docs_build_sets(tmp_path, monkeypatch):
    from synthetic_mnist import write_synthetic_mnist

    from ppl_models import tutorial

    root = write_synthetic_mnist(tmp_path / "mnist", n_train=None, n_test=20)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PPL_MODELS_DATA", str(root))
    assert tutorial.mnist_root() == root
    monkeypatch.setenv("PPL_MODELS_DATA", str(tmp_path / "missing"))
    assert tutorial.mnist_root() is None
    monkeypatch.delenv("PPL_MODELS_DATA")
    assert all(p.is_absolute() for p in tutorial.mnist_candidates())
    # the docs build sets both from the repository: the package reads no path of the checkout
    conf = load_conf()
    assert conf.BUILD_ENVIRONMENT["PPL_MODELS_RUNS"] == str(DOCS.parent / "runs")
    shared = DOCS.parent.parent / "shared" / "data" / "mnist"
    if (shared / "MNIST" / "raw").is_dir() and not (DOCS.parent / "data" / "mnist").is_dir():
        assert conf.BUILD_ENVIRONMENT["PPL_MODELS_DATA"] == str(shared)


def test_mode_and_page_notes(monkeypatch, tmp_path):
    from ppl_models import tutorial

    shown = []
    monkeypatch.setattr(tutorial, "_display_html", shown.append)
    monkeypatch.setenv("PPL_MODELS_DATA", str(tmp_path / "missing"))
    monkeypatch.setenv("PPL_MODELS_DOCS_MODE", "smoke")
    page = tutorial.setup(mnist=True)
    assert page.smoke and page.mnist is None
    assert "Smoke output" in shown[0] and "--download" in shown[0]
    assert "PPL_MODELS_DATA" in shown[0]
    monkeypatch.setenv("PPL_MODELS_DOCS_MODE", "full")
    shown.clear()
    assert not tutorial.setup().smoke and shown == []
    monkeypatch.setenv("PPL_MODELS_DOCS_MODE", "fast")
    with pytest.raises(ValueError, match="smoke, full"):
        tutorial.mode()


def test_tables_have_one_format_per_column():
    from ppl_models import tutorial

    text = tutorial.table(
        [["a", 1.23456, 1000], ["b", None, 2]], ["x", "y", "n"], [None, "{:.2f}", "{:,}"]
    )
    assert text.splitlines()[2:] == ["| a | 1.23 | 1,000 |", "| b | — | 2 |"]


def test_scratch_dirs_are_removed_at_exit(tmp_path):
    import subprocess
    import sys

    code = "from ppl_models import tutorial; print(tutorial.scratch_dir())"
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(repo)},
        check=True,
    ).stdout
    assert out.strip() and not Path(out.strip()).exists()


def test_mnist_cells_are_tagged_and_skipped_without_mnist():
    """Every code cell of an MNIST page that reads data from page.mnist is tagged mnist (a test
    ``page.mnist is None`` is no read); conf.py's hook adds skip-execution to those tags when
    MNIST is missing."""
    conf = load_conf()
    for page in sorted(TUTORIALS.glob("*.md")):
        text = page.read_text()
        if "setup(mnist=True)" not in text:
            continue
        for cell in re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, re.S):
            if "page.mnist" in cell.replace("page.mnist is None", ""):
                assert cell.startswith(":tags: [mnist"), (page.name, cell[:80])
        source = [text]
        conf.MNIST = None
        conf._skip_mnist_cells(None, f"tutorials/{page.stem}", source)
        assert source[0].count("skip-execution") == text.count(":tags: [mnist]") > 0
