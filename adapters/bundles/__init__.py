"""Bundle writers: the adapters that make generated bundles durable where containers run.

:mod:`adapters.bundles.local` writes them into a directory on this host.
"""
