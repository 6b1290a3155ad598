#!/usr/bin/env python3
"""Validates encoded requests and simulator responses against the OpenAPI schema.

usage: validate_schema.py OPENAPI_JSON DUMP_PROGRAM
Each line the program prints is "request <json>" or "response <json>";
requests must match CreateChatCompletionRequest, responses
CreateChatCompletionResponse. Exits non-zero on the first mismatch.
"""
import json
import subprocess
import sys

try:
    import jsonschema
except ImportError:
    sys.exit("validate_schema.py: python module 'jsonschema' is missing "
             "(./dev test installs python3-jsonschema)")


def main():
    spec_path, program = sys.argv[1], sys.argv[2]
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    out = subprocess.run([program], check=True, capture_output=True, text=True).stdout
    lines = [l for l in out.splitlines() if l.strip()]
    if len(lines) < 5:
        sys.exit(f"expected several documents, got {len(lines)}")
    checked = 0
    for line in lines:
        kind, _, body = line.partition(" ")
        name = {"request": "CreateChatCompletionRequest", "response": "CreateChatCompletionResponse"}[kind]
        schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
        doc = json.loads(body)
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
        if errors:
            for e in errors[:5]:
                print(f"{kind}: {e.json_path}: {e.message[:300]}", file=sys.stderr)
            print(body[:2000], file=sys.stderr)
            sys.exit(1)
        checked += 1
    print(f"{checked} documents match the OpenAPI schema")


if __name__ == "__main__":
    main()
