"""Site data audit before a site joins a federation (after the LAION-400M privacy study).

Finds in-image text (OCR, :mod:`~fedreid.audit.ocr`, repaired by
:mod:`~fedreid.audit.correct`), personal entities in that text, in file names and in
metadata (Presidio with pattern recognisers, :mod:`~fedreid.audit.entities`), grades each
image's re-identification risk from the entities found together (:mod:`~fedreid.audit.risk`),
screens for images like the operator's sensitive exemplars (:mod:`~fedreid.audit.screen`),
writes a report (:mod:`~fedreid.audit.report`) and applies a policy: ``report``, ``redact``
(:mod:`~fedreid.audit.redact`) or ``block`` (:mod:`~fedreid.audit.gate`, read by
`fedreid site join`). :mod:`~fedreid.audit.planted` writes ground truth for measuring it.
Nothing the audit produces leaves the site.
"""

from fedreid.audit.entities import EntityAnalyzer, default_names, find_ner_model, read_names
from fedreid.audit.gate import join_blockers
from fedreid.audit.run import POLICIES, AuditResult, audit_site

__all__ = [
    "POLICIES",
    "AuditResult",
    "EntityAnalyzer",
    "audit_site",
    "default_names",
    "find_ner_model",
    "join_blockers",
    "read_names",
]
