from __future__ import annotations

import json

from gpucarbon.report.model import Report, to_json


def render(report: Report) -> str:
    return json.dumps(to_json(report), indent=2) + "\n"
