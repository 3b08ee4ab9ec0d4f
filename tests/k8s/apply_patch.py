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
# A generateName pod has no name yet when admission runs (the API server names it after);
# the schema check wants one, so give it the kind of name it will get.
meta = patched.setdefault("metadata", {})
if not meta.get("name") and meta.get("generateName"):
    meta["name"] = meta["generateName"] + "x7k2p"
with open(out, "w") as f:
    json.dump(patched, f, indent=1)
