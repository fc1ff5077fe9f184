"""Cluster mode: WindowsContainer resources on a Kubernetes API server (kubernetes-asyncio)."""
