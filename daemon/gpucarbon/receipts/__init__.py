"""Energy and carbon receipts for finished runs (docs/receipts.md).

Read in order, like the stages of a joule:
  model.py       what a receipt says; the settings; a run's final facts
  outcome.py     pod status / Slurm job state -> outcome, reason, exit code
  fingerprint.py what makes two runs the same computation (hash)
  builder.py     a finished run's totals + facts -> one receipt (pure)
  tracker.py     watches snapshots, decides when a run has ended, keeps the
                 waste counters and the repeat window (saved in the checkpoint)
  store.py       receipts.jsonl (fsync, rotation) and the in-memory ring
  outbox.py      the webhook's bounded, persisted queue
  sinks.py       Kubernetes Event, webhook, log line
  dispatcher.py  the task that tells every sink, file first, off the poll loop
"""
