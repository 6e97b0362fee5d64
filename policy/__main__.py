"""The mlcache policy pack: `pulumi preview --policy-pack policy` (see policies.py)."""

from policies import POLICIES
from pulumi_policy import PolicyPack

PolicyPack(name="mlcache", policies=POLICIES)
