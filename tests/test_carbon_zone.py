"""Zone detection from node labels and spec.providerID: a pure function, table-tested."""

from __future__ import annotations

import pytest

from gpucarbon.carbon.table import load_bundled_table
from gpucarbon.carbon.zone import detect_cloud_provider, detect_zone, resolve_zone

REGION = "topology.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"


@pytest.mark.parametrize(
    "labels, provider_id, expected",
    [
        # provider from spec.providerID
        ({REGION: "us-east-1"}, "aws:///us-east-1a/i-0abc", "aws:us-east-1"),
        ({REGION: "europe-west4"}, "gce://proj/europe-west4-a/node-1", "gcp:europe-west4"),
        (
            {REGION: "westeurope"},
            "azure:///subscriptions/x/resourceGroups/y/providers/"
            "Microsoft.Compute/virtualMachineScaleSets/z/virtualMachines/0",
            "azure:westeurope",
        ),
        # provider from cloud-specific labels
        ({REGION: "eu-west-3", "eks.amazonaws.com/nodegroup": "gpu"}, None, "aws:eu-west-3"),
        ({REGION: "us-central1", "cloud.google.com/gke-nodepool": "a100"}, None, "gcp:us-central1"),
        ({REGION: "EastUS", "kubernetes.azure.com/agentpool": "gpu"}, None, "azure:eastus"),
        # deprecated region label
        ({"failure-domain.beta.kubernetes.io/region": "ap-south-1"}, "aws:///ap-south-1b/i-1", "aws:ap-south-1"),
        # region derived from the zone label when the region label is missing
        ({ZONE: "us-west-2b"}, "aws:///us-west-2b/i-1", "aws:us-west-2"),
        ({ZONE: "us-gov-west-1a"}, "aws:///us-gov-west-1a/i-1", "aws:us-gov-west-1"),
        ({ZONE: "asia-northeast1-c", "cloud.google.com/machine-family": "a3"}, None, "gcp:asia-northeast1"),
        ({ZONE: "swedencentral-2"}, "azure:///subscriptions/x", "azure:swedencentral"),
        # OKE: providerID is the instance OCID; the region label may be the long name or the short key
        ({REGION: "us-ashburn-1"}, "ocid1.instance.oc1.iad.anuwcljt", "oci:us-ashburn-1"),
        ({REGION: "yul", "oci.oraclecloud.com/fault-domain": "FAULT-DOMAIN-1"}, None, "oci:yul"),
        ({ZONE: "UpwQ:US-ASHBURN-AD-1"}, "ocid1.instance.oc1.iad.x", None),
        # on-prem: the region label is taken as a grid zone, as written
        ({REGION: "FR"}, None, "FR"),
        ({REGION: "US-EGRID-RFCE"}, "kind://docker/kind/kind-worker", "US-EGRID-RFCE"),
        # nothing to go on
        ({}, None, None),
        ({"kubernetes.io/hostname": "gpu-1"}, "aws:///us-east-1a/i-1", None),
        ({ZONE: "rack-7"}, None, None),
        ({REGION: "  "}, None, None),
    ],
)
def test_detect_zone(labels, provider_id, expected):
    assert detect_zone(labels, provider_id) == expected


@pytest.mark.parametrize(
    "labels, provider_id, expected",
    [
        ({}, "aws:///us-east-1a/i-1", "aws"),
        ({}, "gce://p/z/n", "gcp"),
        ({}, "azure:///s", "azure"),
        ({"karpenter.k8s.aws/instance-family": "p5"}, None, "aws"),
        ({"alpha.eksctl.io/cluster-name": "c"}, None, "aws"),
        ({"node.kubernetes.io/instance-type": "p4d.24xlarge"}, None, None),
        ({}, "", None),
    ],
)
def test_detect_cloud_provider(labels, provider_id, expected):
    assert detect_cloud_provider(labels, provider_id) == expected


@pytest.mark.parametrize(
    "labels, provider_id, grid_zone",
    [
        ({REGION: "us-east-1"}, "aws:///us-east-1a/i-1", "US-EGRID-SRVC"),
        ({REGION: "europe-north1"}, "gce://p/europe-north1-a/n", "FI"),
        ({REGION: "uksouth"}, "azure:///s", "GB"),
        ({REGION: "northamerica-northeast1"}, "gce://p/northamerica-northeast1-a/n", "CA-QC"),
        ({REGION: "yyz"}, "ocid1.instance.oc1.yyz.x", "CA-ON"),
    ],
)
def test_detected_zones_resolve_in_the_bundled_table(labels, provider_id, grid_zone):
    lookup = load_bundled_table().lookup(detect_zone(labels, provider_id))
    assert (lookup.entry.zone, lookup.matched_by) == (grid_zone, "cloud-region")


@pytest.mark.parametrize(
    "configured, labels, expected",
    [
        ("FR", {REGION: "us-east-1"}, "FR"),  # explicit config wins over labels
        ("auto", {REGION: "us-east-1", "eks.amazonaws.com/nodegroup": "g"}, "aws:us-east-1"),
        ("AUTO", {}, "WORLD"),
        (None, {REGION: "DE"}, "DE"),
        ("", {}, "WORLD"),
    ],
)
def test_resolve_zone(configured, labels, expected):
    assert resolve_zone(configured, labels) == expected
