"""The node agent (``winspec agent``): receives bundles over HTTPS and writes them on its node."""
