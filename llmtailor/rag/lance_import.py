"""Import LanceDB without its REST client: half a second off every cold `tailor rag query`.

LanceDB 0.40 imports `lance_namespace`, whose package imports the generated OpenAPI client
`lance_namespace_urllib3_client`, whose `__init__` imports every API class (about 0.5 s on this CPU; the bench
in bench/results/retrieval_latency.md measures it). An embedded index never talks to a REST namespace, and the
names LanceDB needs at import time live in the client's `models` subpackage, which imports without the package's
`__init__`. So the package is registered before LanceDB is imported with its `__path__` (submodules import as
usual) and a module `__getattr__` that runs the real `__init__` the first time any top-level name is asked for:
nothing is missing, it is only loaded when used. Lance itself made the same change (lance-format/lance#9273).
`LLMTAILOR_EAGER_LANCEDB=1` turns this off (the benchmark's baseline).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

CLIENT = "lance_namespace_urllib3_client"


def defer_rest_client(name: str = CLIENT) -> bool:
    """Register `name` so its `__init__` runs on first attribute use; False when it is loaded already or absent."""
    if name in sys.modules or os.environ.get("LLMTAILOR_EAGER_LANCEDB") == "1":
        return False
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return False
    module = importlib.util.module_from_spec(spec)

    def load_on_use(attr: str):
        if attr.startswith("__"):  # import machinery probes dunders: never a reason to load the client
            raise AttributeError(attr)
        del module.__getattr__
        spec.loader.exec_module(module)
        return getattr(module, attr)

    module.__getattr__ = load_on_use  # type: ignore[attr-defined]
    sys.modules[name] = module
    return True


def import_lancedb() -> ModuleType:
    """`import lancedb`, with the REST client deferred."""
    if "lancedb" not in sys.modules:
        defer_rest_client()
    import lancedb

    return lancedb
