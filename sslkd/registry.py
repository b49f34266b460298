"""Name -> builder registries for strategies, backbones, heads and data sets, plus plugin loading.

Third-party code registers itself by being imported: either listed under the ``sslkd.strategies`` entry-point
group of an installed package, or named with ``--plugin module.path`` on the command line.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from sslkd.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping filled by the ``@registry.register("name")`` decorator."""

    def __init__(self, kind: str, unknown_hint: str = ""):
        self.kind = kind
        self.unknown_hint = unknown_hint
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or obj.__name__.lower()
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UserError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: str) -> str:
        known = ", ".join(sorted(self._items)) or "none"
        close = difflib.get_close_matches(name, list(self._items), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {known}.{self.unknown_hint}"

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)


STRATEGIES: Registry = Registry("strategy", " If it comes from a plugin, import it first: sslkd --plugin MODULE ...")
OBJECTIVES: Registry = Registry("objective")
BACKBONES: Registry = Registry("backbone")
HEADS: Registry = Registry("head")
DATASETS: Registry = Registry("data set")

ENTRY_POINT_GROUP = "sslkd.strategies"


def load_builtins() -> None:
    """Import the modules whose decorators fill the registries."""
    import sslkd.data  # noqa: F401
    import sslkd.models  # noqa: F401
    import sslkd.strategies  # noqa: F401


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import built-ins, installed entry points of ``sslkd.strategies``, then each ``--plugin`` module."""
    load_builtins()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    if modules and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m sslkd` does: a plugin file in the current folder imports
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(
                f"cannot import plugin module {module!r} ({exc}); check the module path and that it is on PYTHONPATH"
            ) from exc


def load_run_plugins(modules: list[str]) -> None:
    """Import the plugin modules a run was trained with (its config.yaml records them), naming that record when one
    cannot be imported here."""
    try:
        load_plugins(modules)
    except UserError as exc:
        raise UserError(f"{exc} (the run was trained with --plugin {' --plugin '.join(modules)}, as its config.yaml "
                        "records: run from the folder that holds them)") from exc
