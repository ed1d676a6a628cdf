"""`gpu-carbon-exporter report`: a period's energy, emissions, cost and waste per
team, namespace or workload, read from any PromQL store and from receipts.

Stages, one module each, forward only:
    cli      flags -> ReportRequest (exit 2 on bad usage)
    client   the Prometheus HTTP API (/api/v1/query, /query_range, /series), auth, TLS
    queries  the PromQL: which recording rule answers which figure
    gather   runs the queries, checks the store has what it needs -> Report
    receipts reads receipts.jsonl files, joins runs across nodes, finds repeats
    model    the Report dataclasses and their JSON shape (units in docs/report.md)
    render/  one renderer per output format (table, csv, json, markdown, html)
"""
