"""Node constraints shared by every pod that mounts the cache."""

from __future__ import annotations

from typing import Any

from settings import Placement

ZONE_LABEL = "topology.kubernetes.io/zone"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


def node_affinity(placement: Placement) -> dict[str, Any]:
    """Required node affinity: the GPU product and, when pinned, the zone.

    Terms are ORed and expressions within a term ANDed, so both constraints sit in the one
    term: two terms would let a pod land on any GPU node *or* any node of the zone.
    """
    expressions = [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [placement.gpu_product]}]
    if placement.zone:
        expressions.insert(0, {"key": ZONE_LABEL, "operator": "In", "values": [placement.zone]})
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": expressions}]}
        }
    }
