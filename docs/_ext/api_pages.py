"""Two helpers of the generated API reference (``docs/api/index.md``).

Autosummary writes one page per module from ``_templates/autosummary/module.rst``, and autodoc
documents each function and class once, on the page of the module that defines it. A package
that re-exports names (``ppl_models.fit_svi``, ``ppl_models.vae.load_mnist``) would otherwise
not say so; this extension adds:

- the ``reexports`` directive: ``.. reexports:: MODULE`` lists the names in the module's
  ``__all__`` that another module defines, each linked to where it is documented (nothing when
  there are none);
- a ``missing-reference`` handler: a reference to a re-exported function or class of one of the
  packages in the ``reexports_packages`` setting (``{func}`ppl_models.fit_svi```) resolves to
  the object's own page, so pages may name the public spelling and survive a module move.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys

from sphinx.util.docutils import SphinxDirective


def defines(module, name: str) -> bool:
    """Whether ``module``'s own source assigns ``name`` at its top level (not an import)."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return False
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def home(package: str, name: str, value) -> tuple[str, str, str] | None:
    """(role, module, full name) of where ``value``, exported as ``name``, is defined.

    Functions and classes say so themselves (``__module__``). Any other value is defined by the
    module of ``package`` that binds it to ``name`` by an assignment; None when none does.
    """
    if inspect.isclass(value) or inspect.isfunction(value):
        role = "class" if inspect.isclass(value) else "func"
        return role, value.__module__, f"{value.__module__}.{value.__qualname__}"
    for modname, module in sorted(sys.modules.items()):
        if (
            modname.startswith(f"{package}.")
            and module is not None
            and vars(module).get(name) is value
            and defines(module, name)
        ):
            return "data", modname, f"{modname}.{name}"
    return None


def reexports(module) -> list[tuple[str, str, str, str]]:
    """(name, role, defining module, full name) for each name of ``__all__`` defined elsewhere."""
    package = module.__name__.split(".")[0]
    found = []
    for name in getattr(module, "__all__", None) or ():
        where = home(package, name, getattr(module, name))
        if where is not None and where[1] != module.__name__:
            found.append((name, *where))
    return found


class ReExports(SphinxDirective):
    """``.. reexports:: MODULE``: the module's re-exported names, linked to their pages."""

    required_arguments = 1

    def run(self):
        found = reexports(importlib.import_module(self.arguments[0]))
        if not found:
            return []
        lines = [
            ".. rubric:: Re-exported names",
            "",
            "Importable from this module, and documented on the page of the module that "
            "defines them:",
            "",
        ]
        lines += [
            f"- :{role}:`{name} <{full}>` from :mod:`{modname}`"
            for name, role, modname, full in found
        ]
        return self.parse_text_to_nodes("\n".join(lines))


def resolve_reexport(app, env, node, contnode):
    """Resolve a Python reference to a re-exported function or class at its definition."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if target.split(".")[0] not in app.config.reexports_packages:
        return None
    module_name, _, name = target.rpartition(".")
    if not module_name:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    value = getattr(module, name, None)
    if not (inspect.isclass(value) or inspect.isfunction(value)):
        return None  # only functions and classes: any other value is not documented
    where = home(module_name, name, value)
    if where[2] == target:
        return None
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], where[2], node, contnode
    )


def setup(app):
    app.add_config_value("reexports_packages", (), "env", types=(list, tuple))
    app.add_directive("reexports", ReExports)
    app.connect("missing-reference", resolve_reexport)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
