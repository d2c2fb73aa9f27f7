"""The `lockstep` CrossGuard pack: `pulumi preview|up --policy-pack policy` (rules in lockstep_policy.py)."""

from lockstep_policy import POLICIES
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack("lockstep", policies=POLICIES, enforcement_level=EnforcementLevel.MANDATORY)
