"""Import kubernetes-asyncio without the API and model classes winspec never uses.

kubernetes-asyncio's package ``__init__`` files import every API class and every model class
(about 850 modules, 0.2–0.3 s of a cluster-mode start-up, a quarter of a restart that finds
nothing to do), and ``kubernetes_asyncio.config`` imports the kubeconfig loader (with YAML and
the exec, OIDC and Google credential providers) where a controller in a pod uses the in-cluster
one. Winspec needs one configuration loader (kubeconfig, with its exec and OIDC credentials, or
in-cluster), the ``Configuration`` and the ``ApiClient``: about 15 modules.

:func:`import_light` puts the packages ``kubernetes_asyncio``, ``kubernetes_asyncio.client``,
``kubernetes_asyncio.client.models`` and ``kubernetes_asyncio.config`` in place without running
their ``__init__``. Each answers a name its ``__init__`` imports (``from
kubernetes_asyncio.client.api_client import ApiClient``) by importing that one module; its
submodules import as usual; any other name runs the real ``__init__`` first. So everything the
library offers still works, the classes not used are just never imported. Where a package is
imported already, it is left as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import threading
from typing import Any

#: The packages whose ``__init__`` imports what winspec does not need.
PACKAGES = (
    "kubernetes_asyncio",
    "kubernetes_asyncio.client",
    "kubernetes_asyncio.client.models",
    "kubernetes_asyncio.config",
)

# The generated ``__init__`` files name each class on a line of its own; a name imported in
# parentheses over several lines is not matched, and asking for it runs the real ``__init__``.
_FROM_IMPORT = re.compile(r"^from ([\w.]+) import (\w+)$", re.MULTILINE)


def import_light() -> None:
    """Make the :data:`PACKAGES` importable without their ``__init__``; see the module's text."""
    for name in PACKAGES:
        if name not in sys.modules:
            _install(name)


def _install(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.origin is None:
        return  # not installed: the ordinary import will say so
    with open(spec.origin, encoding="utf-8") as f:
        sources = {attr: source for source, attr in _FROM_IMPORT.findall(f.read())}
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    lock = threading.RLock()
    loaded = False

    def load_all() -> None:
        nonlocal loaded
        with lock:
            if not loaded:
                loaded = True
                loader.exec_module(module)

    def __getattr__(attr: str) -> Any:  # noqa: N807 (PEP 562)
        source = sources.get(attr)
        if source is not None and not loaded:
            value = getattr(importlib.import_module(source), attr)
            setattr(module, attr, value)
            return value
        if not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
            # A submodule: ``from package import submodule`` asks for the attribute first and
            # imports the submodule when there is none.
            raise AttributeError(attr)
        load_all()
        if attr in module.__dict__:
            return module.__dict__[attr]
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[name] = module
    parent, _, leaf = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], leaf, module)
