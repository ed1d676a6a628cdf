"""Generated kubelet PodResources v1 stubs; regenerate with scripts/gen-podresources-proto."""
