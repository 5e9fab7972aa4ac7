"""The one import hook bench/pg_trace_probe.py and the store-bounds replacements (bench/store_bounds/)
share: ``on_import(names, patch)`` calls ``patch(module)`` once each named module has run, so hoopy's code is replaced without being edited."""
import importlib.abc
import sys


def on_import(names, patch) -> None:
    names = frozenset(names)

    class Loader(importlib.abc.Loader):
        def __init__(self, inner):
            self.inner = inner

        def create_module(self, spec):
            return self.inner.create_module(spec)

        def exec_module(self, module):
            self.inner.exec_module(module)
            patch(module)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname not in names:
                return None
            for finder in sys.meta_path:
                if finder is self:
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    spec.loader = Loader(spec.loader)
                    return spec
            return None

    sys.meta_path.insert(0, Finder())
