"""Everything that talks to the outside world: the Docker Engine API, Kubernetes, the file
system, the Windows registry, HTTP. Adapters implement the ports of :mod:`controller.ports`
and wire a mode together (:mod:`adapters.runtime`, and each mode's ``mode`` module); the core
never imports them.
"""
