"""The official list of Dutch municipalities and a tolerant matcher for typed names.

The list is the CBS municipal division on its reference date, shipped as
``journey/data/gemeenten.json`` (code, official name, source). Names that people
type instead of the official one, such as "Den Haag", Frisian names, towns and
former municipalities, are in ``journey/data/gemeente-aliassen.json``.

:meth:`OfficialList.match` folds case, diacritics, punctuation and spacing, then
looks the text up among official names and aliases, and only then tolerates a
typo or two. The caller confirms a fuzzy or ambiguous result with the client.
This module reads only its own package data.
"""

from __future__ import annotations

import datetime
import enum
import functools
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

DATA_PACKAGE = "journey.data"
LIST_FILE = "gemeenten.json"
ALIAS_FILE = "gemeente-aliassen.json"

CBS_CODE = re.compile(r"GM\d{4}")
"""A CBS municipality code: "GM" and four digits, e.g. GM0363 for Amsterdam."""

MAX_INPUT_LENGTH = 100
"""Well above the longest name in the data files (30 characters), so longer input
is not a name."""

MIN_FUZZY_LENGTH = 5
"""Shorter inputs get no typo tolerance, because short names such as Ede and Epe
lie 1 edit apart."""

LONG_NAME_LENGTH = 9
"""From this many letters on, 2 edits are tolerated, and shorter names get 1."""

MAX_CANDIDATES = 5
"""The maximum number of candidates in a result, so a chat keyboard stays short."""

ARTICLE_PREFIXES = frozenset({"s", "de", "den", "des", "het"})
"""Leading words that people drop or swap: "'s-Hertogenbosch", "Den Bosch", "Bosch"."""

_PARENTHESIS = re.compile(r"\s*\([^)]*\)")
_WORD = re.compile(r"[^\W_]+")


class OfficialListError(ValueError):
    """Raised when a data file is invalid. The message names file, entry and field."""


class MatchKind(enum.StrEnum):
    """The relation of a typed name to the official list."""

    EXACT = "exact"
    """One municipality, by its official name or an alias with one code."""
    AMBIGUOUS = "ambiguous"
    """Several municipalities fit equally well; the client must choose."""
    FUZZY = "fuzzy"
    """One municipality is closest after tolerating a typo; the client must confirm."""
    NONE = "none"
    """Nothing fits."""


class AliasKind(enum.StrEnum):
    """The reason an alias names a municipality."""

    COMMON_NAME = "common_name"
    """An everyday or shortened name, e.g. "Den Bosch" for 's-Hertogenbosch."""
    FRISIAN_NAME = "frisian_name"
    """The Frisian name of a municipality with a Dutch official name."""
    DUTCH_NAME = "dutch_name"
    """The Dutch name of a municipality with a Frisian official name."""
    PLACE = "place"
    """A town or village inside the municipality."""
    FORMER_MUNICIPALITY = "former_municipality"
    """A municipality that merged into the current one on ``merged_on``."""


@dataclass(frozen=True, slots=True)
class OfficialMunicipality:
    """A municipality on the official list: its CBS code and official CBS name."""

    code: str
    name: str


@dataclass(frozen=True, slots=True)
class Alias:
    """A name people type for one municipality or, when ambiguous, several."""

    text: str
    codes: tuple[str, ...]
    kind: AliasKind
    merged_on: datetime.date | None = None


@dataclass(frozen=True, slots=True)
class MatchResult:
    """The outcome of :meth:`OfficialList.match`.

    ``candidates`` contains at most :data:`MAX_CANDIDATES` municipalities, ordered
    by edit distance and then by name. It has exactly one entry for ``EXACT``,
    the likely one first for ``FUZZY``, two or more for ``AMBIGUOUS`` and none
    for ``NONE``. ``distance`` is the number of edits between the input and the
    closest official name or alias, 0 unless the result came from typo
    tolerance. ``alias`` is the alias that matched best, or None when an
    official name matched or nothing did.
    """

    kind: MatchKind
    candidates: tuple[OfficialMunicipality, ...] = ()
    distance: int = 0
    alias: Alias | None = None

    @property
    def municipality(self) -> OfficialMunicipality | None:
        """The single municipality of an exact or fuzzy result, else None."""
        if self.kind in (MatchKind.EXACT, MatchKind.FUZZY):
            return self.candidates[0]
        return None


NO_MATCH = MatchResult(MatchKind.NONE)


def name_words(text: str) -> list[str]:
    """Split text into folded words for comparison.

    Diacritics are removed (NFKD), case is folded, and apostrophes, hyphens,
    dots, slashes and brackets separate words. A leading "gemeente" and a
    trailing "gemeente" are dropped, so "Gemeente 's-Gravenhage" and
    "s gravenhage" give the same words.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    words = _WORD.findall(bare.casefold())
    if words and words[0] == "gemeente":
        words = words[1:]
    if words and words[-1] == "gemeente":
        words = words[:-1]
    return words


def name_key(text: str) -> str:
    """Return the comparison key of a name: its folded words without spaces.

    Joining without spaces makes "Sudwest Fryslan", "Súdwest-Fryslân" and
    "sudwestfryslan" equal, and "'s-Gravenhage" equal to "sgravenhage".
    """
    return "".join(name_words(text))


def _variant_keys(text: str) -> set[str]:
    """Return the extra keys of a name, without its article or its bracket.

    "Bergen (NH.)" also matches "bergen", and "'s-Hertogenbosch" also matches
    "hertogenbosch". The full key itself is not included.
    """
    full = name_key(text)
    variants: set[str] = set()
    for form in (text, _PARENTHESIS.sub("", text)):
        words = name_words(form)
        if not words:
            continue
        variants.add("".join(words))
        if len(words) > 1 and words[0] in ARTICLE_PREFIXES:
            variants.add("".join(words[1:]))
    variants.discard(full)
    variants.discard("")
    return variants


def edit_distance(first: str, second: str, limit: int) -> int | None:
    """Return the optimal string alignment distance, or None when above ``limit``.

    This is Damerau-Levenshtein restricted so that no substring is edited
    twice: insertions, deletions, substitutions and swaps of two adjacent
    characters each cost 1. The computation stops as soon as a whole row of
    the table exceeds ``limit``, because no later cell can be smaller.
    """
    if abs(len(first) - len(second)) > limit:
        return None

    before_previous: list[int] = []
    previous = list(range(len(second) + 1))
    for i in range(1, len(first) + 1):
        current = [i] + [0] * len(second)
        for j in range(1, len(second) + 1):
            cost = 0 if first[i - 1] == second[j - 1] else 1
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            swapped = (
                i > 1
                and j > 1
                and first[i - 1] == second[j - 2]
                and first[i - 2] == second[j - 1]
            )
            if swapped:
                value = min(value, before_previous[j - 2] + 1)
            current[j] = value
        if min(current) > limit:
            return None
        before_previous, previous = previous, current

    distance = previous[-1]
    return distance if distance <= limit else None


def typo_limit(key: str) -> int:
    """Return how many edits a typed key may be from a name and still match."""
    if len(key) < MIN_FUZZY_LENGTH:
        return 0
    if len(key) < LONG_NAME_LENGTH:
        return 1
    return 2


class OfficialList:
    """The municipalities on the official list, with lookup by code and by name."""

    __slots__ = (
        "_aliases",
        "_by_code",
        "_exact",
        "_fuzzy_keys",
        "_note",
        "_reference_date",
        "_source",
        "_source_url",
        "_variants",
    )

    def __init__(
        self,
        municipalities: Iterable[OfficialMunicipality],
        aliases: Iterable[Alias] = (),
        *,
        reference_date: datetime.date,
        source: str,
        source_url: str = "",
        note: str = "",
    ) -> None:
        """Index the municipalities and aliases.

        Raises:
            OfficialListError: a code or official name appears twice, an alias
                names an unknown code, an alias appears twice, or an alias is
                spelled like an official name.
        """
        self._reference_date = reference_date
        self._source = source
        self._source_url = source_url
        self._note = note

        self._by_code: dict[str, OfficialMunicipality] = {}
        self._exact: dict[str, OfficialMunicipality] = {}
        for municipality in municipalities:
            self._add_municipality(municipality)

        self._aliases: tuple[Alias, ...] = tuple(aliases)
        # Variant keys map to every code they can mean plus the alias behind
        # them, so "bergen" collects both Bergens and a result names its alias.
        self._variants: dict[str, tuple[frozenset[str], Alias | None]] = {}
        for municipality in self._by_code.values():
            for key in _variant_keys(municipality.name):
                if key not in self._exact:
                    self._add_variant(key, {municipality.code}, None)
        alias_keys: set[str] = set()
        for alias in self._aliases:
            self._add_alias(alias, alias_keys)

        self._fuzzy_keys: dict[int, list[str]] = {}
        for key in [*self._exact, *self._variants]:
            self._fuzzy_keys.setdefault(len(key), []).append(key)

    def _add_municipality(self, municipality: OfficialMunicipality) -> None:
        if municipality.code in self._by_code:
            raise OfficialListError(
                f"municipality {municipality.code}: code appears twice"
            )
        key = name_key(municipality.name)
        if not key:
            raise OfficialListError(
                f"municipality {municipality.code}: name {municipality.name!r} "
                "has no letters"
            )
        if key in self._exact:
            other = self._exact[key].code
            raise OfficialListError(
                f"municipality {municipality.code}: name {municipality.name!r} "
                f"is the same as the name of {other}"
            )
        self._by_code[municipality.code] = municipality
        self._exact[key] = municipality

    def _add_alias(self, alias: Alias, seen: set[str]) -> None:
        label = f"alias {alias.text!r}"
        unknown = [code for code in alias.codes if code not in self._by_code]
        if unknown:
            raise OfficialListError(
                f"{label}: codes {', '.join(unknown)} are not on the official list"
            )
        key = name_key(alias.text)
        if not key:
            raise OfficialListError(f"{label}: the alias has no letters")
        if key in self._exact:
            official = self._exact[key]
            raise OfficialListError(
                f"{label}: spelled like the official name of {official.code} "
                f"({official.name}). Remove the alias."
            )
        if key in seen:
            raise OfficialListError(f"{label}: another alias is spelled the same")
        seen.add(key)

        codes = set(alias.codes)
        self._add_variant(key, codes, alias)
        for variant in _variant_keys(alias.text):
            if variant not in self._exact:
                self._add_variant(variant, codes, alias)

    def _add_variant(self, key: str, codes: set[str], alias: Alias | None) -> None:
        known, known_alias = self._variants.get(key, (frozenset(), None))
        self._variants[key] = (known | codes, known_alias or alias)

    @classmethod
    def from_documents(
        cls, list_document: Any, alias_document: Any = None
    ) -> OfficialList:
        """Validate the parsed contents of the list file and the alias file.

        Raises:
            OfficialListError: a field of either document is missing or
                invalid, a code is not of the form GM and four digits, a code
                appears twice, ``count`` differs from the number of
                municipalities, or an alias is invalid.
        """
        if not isinstance(list_document, dict):
            raise OfficialListError(f"{LIST_FILE}: expected a JSON object")
        raw_municipalities = list_document.get("municipalities")
        if not isinstance(raw_municipalities, list):
            raise OfficialListError(
                f"{LIST_FILE}: field 'municipalities' must be a list"
            )
        municipalities = [
            _parse_municipality(index, entry)
            for index, entry in enumerate(raw_municipalities)
        ]

        count = list_document.get("count")
        if not isinstance(count, int) or isinstance(count, bool):
            raise OfficialListError(f"{LIST_FILE}: field 'count' must be a number")
        if count != len(municipalities):
            raise OfficialListError(
                f"{LIST_FILE}: field 'count' is {count}, but the list has "
                f"{len(municipalities)} municipalities"
            )

        reference_date = _parse_date(
            list_document.get("reference_date"), f"{LIST_FILE}: field 'reference_date'"
        )
        source = list_document.get("source")
        if not isinstance(source, str) or not source.strip():
            raise OfficialListError(f"{LIST_FILE}: field 'source' is missing or empty")

        aliases: list[Alias] = []
        if alias_document is not None:
            aliases = _parse_alias_document(alias_document)

        return cls(
            municipalities,
            aliases,
            reference_date=reference_date,
            source=source,
            source_url=str(list_document.get("source_url", "")),
            note=str(list_document.get("note", "")),
        )

    @property
    def reference_date(self) -> datetime.date:
        """The date on which this municipal division is in force."""
        return self._reference_date

    @property
    def source(self) -> str:
        """The CBS publication the list comes from."""
        return self._source

    @property
    def source_url(self) -> str:
        """Where that publication is found."""
        return self._source_url

    @property
    def note(self) -> str:
        """How the list was obtained and checked."""
        return self._note

    @property
    def aliases(self) -> tuple[Alias, ...]:
        """The aliases, in the order of the alias file."""
        return self._aliases

    def __len__(self) -> int:
        return len(self._by_code)

    def __iter__(self) -> Iterator[OfficialMunicipality]:
        return iter(self._by_code.values())

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def get(self, code: str) -> OfficialMunicipality | None:
        """Return the municipality with this CBS code, or None."""
        return self._by_code.get(code)

    def match(self, text: str) -> MatchResult:
        """Match a typed municipality name against the official list.

        The lookup runs in order: the official name, then aliases and names
        without their article or bracket ("Bosch", "Bergen"), then the same
        after dropping a leading article from the input ("Den Hertogenbosch"),
        and last the names within :func:`typo_limit` edits. Input of more than
        :data:`MAX_INPUT_LENGTH` characters, or with no letters, matches
        nothing.
        """
        if len(text) > MAX_INPUT_LENGTH:
            return NO_MATCH
        words = name_words(text)
        if not words:
            return NO_MATCH
        key = "".join(words)

        keys = [key]
        if len(words) > 1 and words[0] in ARTICLE_PREFIXES:
            keys.append("".join(words[1:]))
        for candidate_key in keys:
            found = self._lookup(candidate_key)
            if found is not None:
                return found

        return self._match_typo(key)

    def _lookup(self, key: str) -> MatchResult | None:
        official = self._exact.get(key)
        if official is not None:
            return MatchResult(MatchKind.EXACT, (official,))
        if key not in self._variants:
            return None

        codes, alias = self._variants[key]
        candidates = self._sorted_by_name(codes)
        if len(candidates) == 1:
            return MatchResult(MatchKind.EXACT, candidates, alias=alias)
        return MatchResult(
            MatchKind.AMBIGUOUS, candidates[:MAX_CANDIDATES], alias=alias
        )

    def _match_typo(self, key: str) -> MatchResult:
        limit = typo_limit(key)
        if limit == 0:
            return NO_MATCH

        # Each municipality keeps its smallest distance and the alias behind it.
        best: dict[str, tuple[int, Alias | None]] = {}
        for length in range(len(key) - limit, len(key) + limit + 1):
            for name in self._fuzzy_keys.get(length, ()):
                distance = edit_distance(key, name, limit)
                if distance is None:
                    continue
                for code, alias in self._codes_of(name):
                    if code not in best or distance < best[code][0]:
                        best[code] = (distance, alias)
        if not best:
            return NO_MATCH

        ranked = sorted(
            best, key=lambda code: (best[code][0], self._by_code[code].name)
        )
        candidates = tuple(self._by_code[code] for code in ranked[:MAX_CANDIDATES])
        distance, alias = best[ranked[0]]
        closest = [code for code in ranked if best[code][0] == distance]
        kind = MatchKind.FUZZY if len(closest) == 1 else MatchKind.AMBIGUOUS
        return MatchResult(kind, candidates, distance=distance, alias=alias)

    def _codes_of(self, key: str) -> list[tuple[str, Alias | None]]:
        official = self._exact.get(key)
        if official is not None:
            return [(official.code, None)]
        codes, alias = self._variants[key]
        return [(code, alias) for code in codes]

    def _sorted_by_name(self, codes: Iterable[str]) -> tuple[OfficialMunicipality, ...]:
        return tuple(
            sorted((self._by_code[code] for code in codes), key=lambda m: m.name)
        )


@functools.cache
def load_official_list() -> OfficialList:
    """Load the official list and the aliases shipped with the package.

    The files are read once per process and the result is cached.

    Raises:
        OfficialListError: a file is missing, not JSON, or invalid.
    """
    # TODO: compare gemeenten.json with a first-hand CBS download of table
    # 86247NED, because it was built from a third-party extract of that table.
    # Replace the file when CBS publishes the division of the next 1 January.
    return OfficialList.from_documents(
        _read_data_file(LIST_FILE), _read_data_file(ALIAS_FILE)
    )


def _read_data_file(name: str) -> Any:
    try:
        text = resources.files(DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    except OSError as error:
        raise OfficialListError(f"{name}: failed to read: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise OfficialListError(f"{name}: invalid JSON: {error}") from None


def _parse_municipality(index: int, entry: Any) -> OfficialMunicipality:
    label = f"{LIST_FILE}: municipality #{index + 1}"
    if not isinstance(entry, dict):
        raise OfficialListError(f"{label}: expected an object")
    code = entry.get("code")
    if not isinstance(code, str) or not CBS_CODE.fullmatch(code):
        raise OfficialListError(
            f"{label}: field 'code' must be a CBS code like GM0363, got {code!r}"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise OfficialListError(f"{label} ({code}): field 'name' is missing or empty")
    return OfficialMunicipality(code=code, name=name)


def _parse_alias_document(document: Any) -> list[Alias]:
    if not isinstance(document, dict) or not isinstance(document.get("aliases"), list):
        raise OfficialListError(f'{ALIAS_FILE}: expected {{"aliases": [...]}}')
    return [
        _parse_alias(index, entry) for index, entry in enumerate(document["aliases"])
    ]


def _parse_alias(index: int, entry: Any) -> Alias:
    label = f"{ALIAS_FILE}: alias #{index + 1}"
    if not isinstance(entry, dict):
        raise OfficialListError(f"{label}: expected an object")
    text = entry.get("alias")
    if not isinstance(text, str) or not text.strip():
        raise OfficialListError(f"{label}: field 'alias' is missing or empty")
    label = f"{ALIAS_FILE}: alias {text!r}"

    codes = entry.get("codes")
    if not isinstance(codes, list) or not codes:
        raise OfficialListError(f"{label}: field 'codes' must be a non-empty list")
    for code in codes:
        if not isinstance(code, str) or not CBS_CODE.fullmatch(code):
            raise OfficialListError(
                f"{label}: field 'codes' must contain CBS codes like GM0363, "
                f"got {code!r}"
            )
    if len(set(codes)) != len(codes):
        raise OfficialListError(f"{label}: field 'codes' lists a code twice")
    if len(codes) > MAX_CANDIDATES:
        raise OfficialListError(
            f"{label}: field 'codes' lists {len(codes)} codes, at most "
            f"{MAX_CANDIDATES} fit in one result"
        )

    kind_value = entry.get("kind")
    kinds = [member.value for member in AliasKind]
    if not isinstance(kind_value, str) or kind_value not in kinds:
        raise OfficialListError(
            f"{label}: field 'kind' must be one of {', '.join(kinds)}, "
            f"got {kind_value!r}"
        )
    kind = AliasKind(kind_value)

    merged_on = None
    if kind is AliasKind.FORMER_MUNICIPALITY:
        merged_on = _parse_date(entry.get("merged_on"), f"{label}: field 'merged_on'")
    elif "merged_on" in entry:
        raise OfficialListError(
            f"{label}: field 'merged_on' is only for kind former_municipality"
        )
    return Alias(text=text, codes=tuple(codes), kind=kind, merged_on=merged_on)


def _parse_date(value: Any, label: str) -> datetime.date:
    if not isinstance(value, str):
        raise OfficialListError(f"{label} must be a date like 2026-01-01")
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise OfficialListError(
            f"{label} must be a date like 2026-01-01, got {value!r}"
        ) from None
