"""Write servicemonitor-monitoring-v1.schema.json: the ServiceMonitor CRD's schema as JSON Schema.

Source: the PyPI package `cloudcoil-models-prometheus-operator` (Apache-2.0), whose pydantic
models are generated from the prometheus-operator's CRDs (its version tracks the operator's:
0.80.1.0 = v0.80.1). Not a dependency of the project; to re-vendor, in any virtual environment:

    pip install cloudcoil-models-prometheus-operator==0.80.1.0
    python deploy/k8s/schemas/vendor_servicemonitor.py

Every object with declared properties gets `additionalProperties: false`: the API server's
strict field validation (kubectl's default) refuses unknown fields of a structural CRD too.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

OUT = Path(__file__).with_name("servicemonitor-monitoring-v1.schema.json")


def strict(node: object) -> None:
    """Close every object schema that lists its properties (in place, recursively)."""
    if isinstance(node, dict):
        if "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)


def main() -> None:
    schema = ServiceMonitor.model_json_schema(by_alias=True, mode="validation")
    strict(schema)
    package = "cloudcoil.models.prometheus_operator"
    schema["description"] = (f"ServiceMonitor (monitoring.coreos.com/v1) from {package} "
                             f"{version(package)} by deploy/k8s/schemas/vendor_servicemonitor.py")
    OUT.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
