"""Sources feed raw Kubernetes-shaped objects into a MeshStore."""
