"""Docker mode: the Engine API client, the event source, the swarm store and the resolver
that turns a container id into a generator request."""
