"""Test doubles for what CI cannot run for real: libnvidia-ml (no GPU; a fake
library at the C ABI under the real pynvml bindings), the Kubernetes API server,
the carbon intensity APIs and scontrol. The kubelet double is a real gRPC server
of the same proto."""
