"""Personal entities in short texts (OCR lines, file names, metadata) with Presidio's analyzer.

Presidio's default analyzer loads the spaCy model ``en_core_web_lg``, which a site without
internet cannot download. This analyzer is built from pattern recognisers only, so it works
on any machine: Presidio's own e-mail, phone (python-phonenumbers), date, URL, credit-card,
IBAN, IP, US SSN and UK NHS recognisers, plus three of ours: PERSON from a deny list of
names, LICENSE_PLATE (upper-case plate shapes) and ID_NUMBER (badge and staff numbers).
Context words ("tel", "plate", "name") still raise scores: the tokeniser is spaCy's blank
English pipeline, which ships with spaCy, and a token's lemma is its lower-case form.

When a spaCy English model *is* installed (``ner_model="auto"`` finds it), its NER adds
PERSON, LOCATION and NRP for names no list holds.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

GIVEN_NAMES = Path(__file__).with_name("given_names.txt")
SURNAMES = Path(__file__).with_name("surnames.txt")
# Entity types reported; Presidio's other recognisers (US driver licence, bank numbers ...)
# fire on any run of digits and would flood a camera site's report.
ENTITY_TYPES = (
    "PERSON", "PHONE_NUMBER", "EMAIL_ADDRESS", "DATE_TIME", "URL", "LICENSE_PLATE", "ID_NUMBER",
    "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN", "UK_NHS", "LOCATION", "NRP",
)
NER_ENTITIES = ("PERSON", "LOCATION", "NRP")
# spaCy English pipelines tried in this order by ner_model="auto".
NER_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_trf")
_CASE_SENSITIVE = re.DOTALL | re.MULTILINE
_PLATE_CONTEXT = ["plate", "registration", "reg", "vehicle", "car", "licence", "license"]
_ID_CONTEXT = ["id", "badge", "staff", "employee", "card", "member", "no"]
_NAME_CONTEXT = ["name", "mr", "mrs", "ms", "dr", "staff", "employee", "patient"]


@dataclass(frozen=True)
class Entity:
    """One entity found in a text: its type, the matched text, Presidio's score, and where it
    came from (``image`` = OCR, ``file name``, ``metadata``)."""

    type: str
    text: str
    score: float
    source: str


@lru_cache(maxsize=16)
def read_names(path: Path) -> tuple[str, ...]:
    """Names in a list file: one per line, ``#`` starts a comment, blank lines skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the name list ({err}); pass a UTF-8 text file "
                         "with one name per line") from err
    return tuple(line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip())


def default_names() -> tuple[str, ...]:
    """The shipped deny list: common given names and surnames (see the files' headers)."""
    return read_names(GIVEN_NAMES) + read_names(SURNAMES)


def find_ner_model(requested: str) -> str | None:
    """The spaCy model to use for NER: ``"none"`` → None; ``"auto"`` → the first installed of
    ``NER_MODELS`` or None; any other name or path must be installed, else ValueError."""
    if requested == "none":
        return None
    if importlib.util.find_spec("spacy") is None:
        if requested == "auto":
            return None
        raise ValueError(f"--ner-model {requested!r}: spaCy is not installed; pip install spacy "
                         "and the model, or pass --ner-model none")
    import spacy.util

    if requested == "auto":
        return next((name for name in NER_MODELS if spacy.util.is_package(name)), None)
    if spacy.util.is_package(requested) or Path(requested).is_dir():
        return requested
    raise ValueError(f"--ner-model {requested!r} is neither an installed spaCy package nor a model "
                     "folder; install it (pip install <wheel>), pass its folder, or use "
                     "--ner-model auto / none")


def _token_engine():
    """A Presidio NLP engine that tokenises with spaCy's blank English pipeline (no model)."""
    import spacy
    from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine

    class TokenEngine(NlpEngine):
        """Tokens and lower-case "lemmas" for context words; no entities."""

        def __init__(self) -> None:
            self.nlp = None

        def load(self) -> None:
            self.nlp = spacy.blank("en")

        def is_loaded(self) -> bool:
            return self.nlp is not None

        def process_text(self, text: str, language: str) -> NlpArtifacts:
            doc = self.nlp(text)
            return NlpArtifacts(entities=[], tokens=doc, tokens_indices=[t.idx for t in doc],
                                lemmas=[t.lower_ for t in doc], nlp_engine=self,
                                language=language, scores=[])

        def process_batch(self, texts, language, batch_size=1, n_process=1, as_tuples=False,
                          **kwargs):
            for text in texts:
                yield text, self.process_text(text, language)

        def is_stopword(self, word: str, language: str) -> bool:
            return self.nlp.vocab[word].is_stop

        def is_punct(self, word: str, language: str) -> bool:
            return self.nlp.vocab[word].is_punct

        def get_supported_entities(self) -> list[str]:
            return []

        def get_supported_languages(self) -> list[str]:
            return ["en"]

    return TokenEngine()


def _our_recognizers(names: Sequence[str]) -> list:
    from presidio_analyzer import Pattern, PatternRecognizer

    month = (r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?")
    dates = PatternRecognizer(
        supported_entity="DATE_TIME", name="WrittenDateRecognizer",
        patterns=[
            Pattern("d Month yyyy", rf"\b(?:[1-9]|[0-2]\d|3[01])(?:st|nd|rd|th)? ?{month},? ?\d{{4}}\b", 0.6),
            Pattern("Month d, yyyy", rf"\b{month} ?(?:[1-9]|[0-2]\d|3[01])(?:st|nd|rd|th)?,? \d{{4}}\b", 0.6),
        ],
    )
    plates = PatternRecognizer(
        supported_entity="LICENSE_PLATE", name="LicensePlateRecognizer", context=_PLATE_CONTEXT,
        global_regex_flags=_CASE_SENSITIVE,
        patterns=[
            Pattern("UK current", r"\b[A-Z]{2}\d{2} ?[A-Z]{3}\b", 0.6),
            Pattern("letters-digits-letters", r"\b[A-Z]{1,3}-\d{2,4}-[A-Z]{1,3}\b", 0.6),
            Pattern("letters digits letters", r"\b[A-Z]{1,3}-?\d{2,4}-?[A-Z]{1,3}\b", 0.5),
            Pattern("US style", r"\b\d[A-Z]{3}\d{3}\b", 0.5),
            Pattern("letters digits", r"\b[A-Z]{1,3}[- ][A-Z]{1,2} ?\d{1,4}\b", 0.4),
        ],
    )
    ids = PatternRecognizer(
        supported_entity="ID_NUMBER", name="BadgeIdRecognizer", context=_ID_CONTEXT,
        patterns=[Pattern(
            "badge or staff number",
            r"(?:\b(?:staff|employee|emp|badge|member|card)\s*(?:[i1l]d|no\.?|nr\.?|#)?|\bid|"
            r"\bno\.?|\bnr\.?|#)\s*[:#]?\s*[A-Z]{0,2}-?\d{4,9}\b", 0.6)],
    )
    recognizers = [dates, plates, ids]
    if names:
        recognizers.append(PatternRecognizer(
            supported_entity="PERSON", name="NameListRecognizer", context=_NAME_CONTEXT,
            deny_list=list(names), deny_list_score=0.7))
    return recognizers


def _presidio_recognizers() -> list:
    import tldextract
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DateRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        NhsRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
        UsSsnRecognizer,
    )

    # Presidio checks an e-mail's domain with tldextract, which by default downloads the public
    # suffix list: an audit must send nothing off the site, so use the list bundled with it.
    offline_tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_tld(pattern_text).fqdn != ""

    return [CreditCardRecognizer(), DateRecognizer(), OfflineEmailRecognizer(), IbanRecognizer(),
            IpRecognizer(), PhoneRecognizer(), NhsRecognizer(), UrlRecognizer(),
            UsSsnRecognizer()]


class EntityAnalyzer:
    """Presidio's ``AnalyzerEngine`` set up for a site audit (see the module docstring).

    ``names`` is the PERSON deny list (matched as whole words, any case); ``allow`` lists
    words never reported (a shop's brand, a street name a site shows everywhere);
    ``min_score`` drops weak matches (Presidio's scores: deny list 0.7, plates and IDs 0.4-0.6,
    phone 0.4, dates 0.6; context words add up to 0.35).
    """

    def __init__(self, *, names: Iterable[str] = (), allow: Iterable[str] = (),
                 ner_model: str | None = None, min_score: float = 0.4) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score={min_score}: pass a score in [0, 1]")
        try:
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        except ImportError as err:
            raise ValueError("the site audit needs presidio-analyzer: pip install "
                             "'fedreid[audit]'") from err
        self.names = tuple(dict.fromkeys(n for n in names if n))
        self.allow = {word.lower() for word in allow}
        self.ner_model = ner_model
        self.min_score = min_score
        registry = RecognizerRegistry(supported_languages=["en"])
        for recognizer in _presidio_recognizers() + _our_recognizers(self.names):
            registry.add_recognizer(recognizer)
        if ner_model is None:
            engine = _token_engine()
        else:
            from presidio_analyzer.nlp_engine import SpacyNlpEngine

            engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": ner_model}])
            engine.load()
            registry.add_nlp_recognizer(nlp_engine=engine)
        self.entities = [e for e in ENTITY_TYPES if ner_model is not None or e not in
                         ("LOCATION", "NRP")]
        self._engine = AnalyzerEngine(registry=registry, nlp_engine=engine,
                                      supported_languages=["en"])

    def analyze(self, text: str, source: str) -> list[Entity]:
        """Entities in ``text``, overlapping matches resolved by Presidio (highest score)."""
        if not text.strip():
            return []
        results = self._engine.analyze(text=text, language="en", entities=self.entities,
                                       score_threshold=self.min_score)
        spans = []
        for r in sorted(results, key=lambda r: (r.start, -r.end)):
            if text[r.start : r.end].strip().lower() in self.allow:
                continue
            if r.entity_type == "URL" and r.end < len(text) and text[r.end].isalnum():
                continue  # "fedreid.sy" cut out of "fedreid.synthetic-8": not a URL
            inside = any(o is not r and o.start <= r.start and r.end <= o.end and o.score > r.score
                         for o in results)
            if inside:  # "john.do" (URL) inside "john.doe@example.org" (e-mail)
                continue
            if spans and spans[-1][0] == r.entity_type and not text[spans[-1][2] : r.start].strip():
                kind, start, _, score = spans[-1]  # "Anna" + "Smith" → one PERSON "Anna Smith"
                spans[-1] = (kind, start, r.end, max(score, r.score))
            else:
                spans.append((r.entity_type, r.start, r.end, r.score))
        return [Entity(kind, text[start:end], round(float(score), 3), source)
                for kind, start, end, score in spans]
