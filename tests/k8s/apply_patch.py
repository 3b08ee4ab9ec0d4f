"""Applies an injector's answer to the pod it was asked about, with the `jsonpatch` library
(an implementation of RFC 6902 independent of weft).

usage: apply_patch.py REVIEW.json ANSWER.json OUT.json
Writes the patched pod; exits 3 when the answer carries no patch.
"""
import base64
import json
import sys

import jsonpatch

review, answer, out = sys.argv[1:4]
with open(review) as f:
    pod = json.load(f)["request"]["object"]
with open(answer) as f:
    response = json.load(f)["response"]
if "patch" not in response:
    sys.exit(3)
assert response.get("patchType") == "JSONPatch", response.get("patchType")
patch = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"])))
patched = patch.apply(pod)
with open(out, "w") as f:
    json.dump(patched, f, indent=1)
