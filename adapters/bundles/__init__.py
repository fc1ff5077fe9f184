"""Bundle writers: the adapters that make generated bundles durable where containers run.

:mod:`adapters.bundles.local` writes them into a directory on this host;
:mod:`adapters.bundles.namespaced` keeps ``<root>/<namespace>/<name>/`` on it (cluster mode's
local bundles, the node agent's).
"""
