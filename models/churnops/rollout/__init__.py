"""The embedded rollout runner: the operator's decisions driven by a local loop instead of Kubernetes."""
