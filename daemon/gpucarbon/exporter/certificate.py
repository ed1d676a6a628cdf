"""When the server certificate expires: a start-up warning and a gauge.

The expiry (`notAfter`) is read from the first certificate in the PEM file
with a small DER walk, so no X.509 library is needed at run time:
Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, ...} }
(RFC 5280, section 4.1).
"""

from __future__ import annotations

import base64
import calendar
import logging
import re
import time
from pathlib import Path

log = logging.getLogger("gpucarbon.exporter.certificate")

WARN_BEFORE_S = 14 * 86400  # warn when the certificate expires within 14 days
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)


class CertificateError(ValueError):
    """The file holds no certificate this parser understands."""


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `at`."""
    if at + 2 > len(data):
        raise CertificateError("truncated DER")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or at + count > len(data):
            raise CertificateError("bad DER length")
        length = int.from_bytes(data[at : at + count], "big")
        at += count
    if at + length > len(data):
        raise CertificateError("truncated DER")
    return tag, at, at + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items, at = [], start
    while at < end:
        tag, value_start, value_end = _tlv(data, at)
        items.append((tag, value_start, value_end))
        at = value_end
    return items


def _time(tag: int, text: bytes) -> float:
    value = text.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ; RFC 5280: YY < 50 is 20YY
        year = int(value[:2])
        value = f"{2000 + year if year < 50 else 1900 + year}{value[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise CertificateError("notAfter is not a time")
    if not value.endswith("Z") or len(value) != 15:
        raise CertificateError("notAfter is not UTC")
    return float(calendar.timegm(time.strptime(value[:-1], "%Y%m%d%H%M%S")))


def not_after(pem: bytes) -> float:
    """Unix seconds after which the first certificate in `pem` is invalid."""
    match = _PEM.search(pem)
    if match is None:
        raise CertificateError("no PEM certificate")
    der = base64.b64decode(b"".join(match.group(1).split()))
    _, cert_start, cert_end = _tlv(der, 0)
    _, tbs_start, tbs_end = _tlv(der, cert_start)
    fields = _children(der, tbs_start, tbs_end)
    if fields and fields[0][0] == 0xA0:  # explicit [0] version
        fields = fields[1:]
    if len(fields) < 4:
        raise CertificateError("too few fields")
    _, validity_start, validity_end = fields[3]
    times = _children(der, validity_start, validity_end)
    if len(times) != 2:
        raise CertificateError("validity is not two times")
    tag, start, end = times[1]
    del cert_end
    return _time(tag, der[start:end])


class CertificateExpiry:
    """The serving certificate's expiry, read once at start (the collector
    exports it as gpucarbon_web_tls_certificate_expiry_timestamp_seconds)."""

    def __init__(self, cert_file: Path, clock=time.time) -> None:
        self.path = cert_file
        self.expires_at = not_after(cert_file.read_bytes())
        remaining = self.expires_at - clock()
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.expires_at))
        if remaining <= 0:
            log.warning("TLS certificate %s expired at %s: clients that verify it refuse to connect", cert_file, when)
        elif remaining < WARN_BEFORE_S:
            log.warning(
                "TLS certificate %s expires at %s, in %.1f days: renew it and restart",
                cert_file,
                when,
                remaining / 86400,
            )
