"""Turns every query of a Grafana dashboard into a recording rule, so that
`promtool check rules` checks its PromQL: prints the rules file.
Usage: python3 scripts/dashboard_rules.py deploy/grafana/genq.json"""

import json
import sys

dashboard = json.load(open(sys.argv[1]))
print("groups:\n  - name: dashboard-queries\n    rules:")
count = 0
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        count += 1
        print(f"      - record: dashboard:query_{count}")
        print(f"        expr: {json.dumps(target['expr'])}")
if count == 0:
    sys.exit("the dashboard has no queries")
