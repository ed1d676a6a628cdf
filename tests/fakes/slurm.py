"""A fake `scontrol` executable for the Slurm source: a small Python script that
answers `show job --json <id>` and `show job -o <id>` from a JSON spec beside it
and logs every call, so tests see exactly what the daemon ran.

    scontrol = FakeScontrol(tmp_path)   # jobs 4242 (account physics) and 4243
    scontrol.spec["fail"] = True; scontrol.save()
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

# Golden: `scontrol show job --json 4242` (Slurm 23.11, data_parser v0.0.40), trimmed.
GOLDEN_JSON = {
    "jobs": [
        {
            "account": "physics",
            "job_id": 4242,
            "job_state": ["RUNNING"],
            "name": "train",
            "partition": "gpu",
            "user_id": 1000,
            "user_name": "alice",
            "group_id": 1000,
            "gres_detail": ["gpu:h100:2(IDX:0-1)"],
            "tres_alloc_str": "cpu=8,mem=64G,node=1,gres/gpu=2",
        }
    ],
    "meta": {"plugin": {"type": "openapi/slurmctld", "data_parser": "data_parser/v0.0.40"}},
    "errors": [],
    "warnings": [],
}
# Golden: `scontrol show job -o 4243` (Slurm 20.11, no --json), trimmed.
GOLDEN_TEXT = (
    "JobId=4243 JobName=sweep UserId=bob(1001) GroupId=bob(1001) MCS_label=N/A "
    "Priority=4294901 Nice=0 Account=vision QOS=normal JobState=RUNNING Reason=None "
    "Command=/home/bob/run.sh --tag Account=fake WorkDir=/home/bob\n"
)

# The fake reads its behaviour from a JSON file next to it and logs every call.
FAKE_SCONTROL = """#!{python}
import json, sys, time, pathlib
here = pathlib.Path(__file__).parent
spec = json.loads((here / "spec.json").read_text())
with open(here / "calls.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
time.sleep(spec.get("sleep", 0))
json_mode = "--json" in sys.argv
job_id = sys.argv[-1]
if json_mode and spec.get("no_json"):
    print("scontrol: unrecognized option '--json'", file=sys.stderr); sys.exit(1)
if job_id not in spec["jobs"]:
    print(f"slurm_load_jobs error: Invalid job id specified", file=sys.stderr); sys.exit(1)
if spec.get("fail"):
    print("slurm_load_jobs error: Unable to contact slurm controller", file=sys.stderr); sys.exit(1)
print(spec["jobs"][job_id]["json" if json_mode else "text"])
"""


class FakeScontrol:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "scontrol"
        self.path.write_text(FAKE_SCONTROL.format(python=sys.executable))
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)
        self.spec: dict = {
            "jobs": {
                "4242": {
                    "json": json.dumps(GOLDEN_JSON),
                    "text": GOLDEN_TEXT.replace("4243", "4242").replace("vision", "physics"),
                },
                "4243": {"json": json.dumps({"jobs": []}), "text": GOLDEN_TEXT},
            }
        }
        self.save()

    def save(self) -> None:
        (self.dir / "spec.json").write_text(json.dumps(self.spec))

    def calls(self) -> list[str]:
        log = self.dir / "calls.log"
        return log.read_text().splitlines() if log.exists() else []
