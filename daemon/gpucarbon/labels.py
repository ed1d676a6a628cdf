"""The one sanitiser for label values.

Every string that reaches a label on /metrics comes from outside the daemon:
pod names and labels (API server), container names (kubelet), Slurm accounts
and users (scontrol), zones from carbon-intensity APIs, the config file, NVML,
and the checkpoint written by an earlier run. Each goes through
`sanitise_label_value` before it is stored, and the exporter applies it once
more to every label it renders (`exporter/http.py`), so no source can make a
scrape fail or put an unbounded value on the wire.

What it does, and what that means for users:
- removes control characters (Cc: NUL, newlines, escapes), format characters
  (Cf: zero-width spaces and joiners, bidi overrides that make two names look
  alike), lone surrogates (Cs: `"FR\ud800"` cannot be encoded as UTF-8), and line
  and paragraph separators (Zl, Zp); trims surrounding whitespace;
- bounds the length: a longer value keeps a prefix, `~` and 8 hex digits of the
  SHA-256 of the whole original, so two long values stay two series.

Consequence (documented in docs/security.md): values that differ only in
removed characters become the same label value: `nlp`, `nlp\u200b` (zero-width
space) and `nlp\x00` are all team `nlp`. That is intended for teams: a team is a
name people read, and look-alike names must not split (or spoof) one. Series
still never collide: workload series are keyed by the consumer, not by its
labels, and the ledger merges two consumers that end up with one label set
(docs/metrics.md, "One series per label set").
"""

from __future__ import annotations

import hashlib
import unicodedata

TEAM_MAX_LEN = 128  # characters; Kubernetes label values are at most 63
WORKLOAD_MAX_LEN = 320  # "<Kind>/<name>": Kubernetes names are at most 253 characters
ANY_LABEL_MAX_LEN = WORKLOAD_MAX_LEN  # the exporter's last-line bound for any label
# Unicode categories removed from label values: control (Cc), format (Cf: zero-width
# and bidi overrides that make two values look alike), lone surrogates (Cs: cannot be
# encoded as UTF-8 on /metrics), line and paragraph separators (Zl, Zp).
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_HASH_CHARS = 8


def sanitise_label_value(value: object, max_len: int = TEAM_MAX_LEN) -> str:
    """A printable, bounded label value; "" for None or nothing printable.

    Over-long values keep a prefix plus `~` and 8 hex of their SHA-256, so two long
    values that share a prefix stay distinct series instead of merging.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if is_clean_label_value(text, max_len):
        return text
    # Bound the work before the per-character pass: a 10 MB label costs no more
    # than a short one. Hash the full original so truncation stays distinct.
    head = text[: max_len * 4]
    cleaned = "".join(ch for ch in head if unicodedata.category(ch) not in _DROPPED_CATEGORIES).strip()
    if len(cleaned) <= max_len and len(head) == len(text):
        return cleaned
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    return cleaned[: max_len - _HASH_CHARS - 1] + "~" + digest


def is_clean_label_value(text: str, max_len: int = TEAM_MAX_LEN) -> bool:
    """True when sanitising would not change `text` (the fast path: C-speed
    checks only). str.isprintable() is False for every category we drop (and
    for some we keep, which then take the slow path and come out unchanged)."""
    return len(text) <= max_len and text.isprintable() and text == text.strip()
