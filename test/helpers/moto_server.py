"""moto's server, with one deviation from real AWS corrected.

Real AWS's tagging API lists classic ELBs under the resource type
"elasticloadbalancing:loadbalancer" (their ARNs are ...:loadbalancer/<name>); moto 5 lists them only
under a type "elb:loadbalancer" that AWS does not have. The agent asks as real AWS expects, so this
launcher makes moto answer as real AWS does. Everything else is moto as installed.
"""
import sys

from moto.resourcegroupstaggingapi.models import ResourceGroupsTaggingAPIBackend
from moto.server import main

_original = ResourceGroupsTaggingAPIBackend._get_resources_generator


def _with_classic_elbs(self, tag_filters=None, resource_type_filters=None):
    if resource_type_filters and "elasticloadbalancing:loadbalancer" in resource_type_filters:
        resource_type_filters = [*resource_type_filters, "elb:loadbalancer"]
    return _original(self, tag_filters=tag_filters, resource_type_filters=resource_type_filters)


ResourceGroupsTaggingAPIBackend._get_resources_generator = _with_classic_elbs

if __name__ == "__main__":
    main(sys.argv[1:])
