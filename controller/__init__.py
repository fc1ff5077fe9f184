"""winspec's core: typed inputs, the pure spec generator, the reconcile loop and its ports.

Nothing here talks to the outside world. Adapters (``adapters``) implement the ports declared
in :mod:`controller.ports` and feed the loop; an import-linter contract keeps this package free
of adapters and of I/O libraries.
"""
