"""Validates TrafficPolicy documents against the CRD's openAPIV3Schema with `jsonschema`.

usage: validate_crd.py CRD.json POLICIES.json
POLICIES.json is a list of [source, yaml_text] pairs. The YAML is read as kubectl reads it,
YAML 1.1 (PyYAML), where a bare `on` is the boolean true. Prints one line per failure; exit 1
if any.
"""
import json
import sys

import jsonschema
import yaml

with open(sys.argv[1]) as f:
    crd = json.load(f)
with open(sys.argv[2]) as f:
    policies = json.load(f)
version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
schema = version["schema"]["openAPIV3Schema"]


def strip(node):
    """The Kubernetes extensions are not JSON Schema: x-kubernetes-int-or-string means either."""
    if isinstance(node, dict):
        node = {k: strip(v) for k, v in node.items()}
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        for k in [k for k in node if k.startswith("x-kubernetes-")]:
            node.pop(k)
        return node
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def bool_keys(node, path=""):
    """Keys YAML 1.1 turned into booleans (`on:`, `yes:`): kubectl would send them as "true"."""
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, bool):
                yield f"{path}.{k}".lstrip(".")
            yield from bool_keys(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from bool_keys(v, f"{path}[{i}]")


validator = jsonschema.Draft7Validator(strip(schema))
failed = 0
count = 0
for source, text in policies:
    policy = yaml.safe_load(text)
    count += 1
    for key in bool_keys(policy):
        failed += 1
        print(f"{source}: {key}: a YAML 1.1 boolean key (quote it)")
    for error in validator.iter_errors(policy):
        failed += 1
        path = ".".join(str(p) for p in error.absolute_path)
        print(f"{source}: {path}: {error.message}")
print(f"validated {count} policies, {failed} errors", file=sys.stderr)
sys.exit(1 if failed else 0)
