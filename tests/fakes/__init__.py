"""Test doubles for what CI cannot run for real: pynvml (no GPU), the Kubernetes
API server, the carbon intensity APIs and scontrol. The kubelet double is a real
gRPC server of the same proto."""
