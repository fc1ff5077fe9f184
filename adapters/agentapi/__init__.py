"""The node agent's HTTP API: the wire format both ends speak, and the controller's client."""
