"""Zone auto-detection from a Kubernetes node's labels and spec.providerID.

Pure functions: the caller reads the Node object and passes its labels and
providerID. The answer is a key the intensity table understands: a cloud
region as ``<provider>:<region>`` (``aws:us-east-1``, ``gcp:europe-west4``,
``azure:westeurope``, ``oci:us-ashburn-1`` or OKE's short ``oci:iad``) or,
when no cloud provider is recognisable, the region
label's value as written (an on-prem cluster may label nodes with a grid zone
such as ``FR`` or ``US-EGRID-RFCE``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gpucarbon.carbon.table import WORLD_ZONE

REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")

# OKE sets spec.providerID to the instance OCID (`ocid1.instance.oc1.<region>.<id>`).
_PROVIDER_ID_PREFIXES = (
    ("aws://", "aws"),
    ("gce://", "gcp"),
    ("azure://", "azure"),
    ("ocid1.", "oci"),
    ("oci://", "oci"),
)
# Label namespaces that only a given cloud's node pools set.
_LABEL_PREFIXES = (
    ("eks.amazonaws.com/", "aws"),
    ("alpha.eksctl.io/", "aws"),
    ("karpenter.k8s.aws/", "aws"),
    ("cloud.google.com/", "gcp"),
    ("kubernetes.azure.com/", "azure"),
    ("oci.oraclecloud.com/", "oci"),
)
# A zone label ends in a suffix that names the zone within the region:
# aws "us-east-1a", gcp "us-central1-a", azure "eastus-1".
_ZONE_SUFFIX = {
    "aws": re.compile(r"^(?P<region>[a-z]{2}(?:-gov)?-[a-z]+-\d+)[a-z]$"),
    "gcp": re.compile(r"^(?P<region>[a-z]+-[a-z]+\d+)-[a-z]$"),
    "azure": re.compile(r"^(?P<region>[a-z0-9]+)-\d+$"),
}


def detect_cloud_provider(labels: Mapping[str, str], provider_id: str | None) -> str | None:
    """ "aws", "gcp", "azure", "oci" or None, from spec.providerID first, then labels."""
    if provider_id:
        for prefix, provider in _PROVIDER_ID_PREFIXES:
            if provider_id.startswith(prefix):
                return provider
    for key in labels:
        for prefix, provider in _LABEL_PREFIXES:
            if key.startswith(prefix):
                return provider
    return None


def detect_zone(labels: Mapping[str, str], provider_id: str | None = None) -> str | None:
    """The intensity-table key for this node, or None when nothing says where it is."""
    provider = detect_cloud_provider(labels, provider_id)
    region = _first_label(labels, REGION_LABELS)
    if region is None and provider is not None:
        region = _region_from_zone_label(provider, _first_label(labels, ZONE_LABELS))
    if region is None:
        return None
    if provider is None:
        return region
    return f"{provider}:{region.lower()}"


def _first_label(labels: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = (labels.get(key) or "").strip()
        if value:
            return value
    return None


def _region_from_zone_label(provider: str, zone: str | None) -> str | None:
    if zone is None:
        return None
    pattern = _ZONE_SUFFIX.get(provider)  # OCI availability domains do not name the region
    match = pattern.match(zone.lower()) if pattern is not None else None
    return match.group("region") if match else None


AUTO = "auto"


def resolve_zone(configured: str | None, labels: Mapping[str, str], provider_id: str | None = None) -> str:
    """The configured zone, or for "auto"/empty the node's detected zone, else WORLD."""
    if configured and configured.strip().lower() != AUTO:
        return configured.strip()
    return detect_zone(labels, provider_id) or WORLD_ZONE
