"""Deployment: the Kubernetes manifests that run the trainer in pods (`k8s.py`). Plain data, no cluster access."""
