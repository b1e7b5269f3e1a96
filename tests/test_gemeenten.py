"""The official municipality list of 1 January 2026 and the name matcher."""

from __future__ import annotations

import datetime
import json
import random
import re
import string
import time
import unicodedata
from importlib import resources
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from journey.gemeenten import (
    MAX_CANDIDATES,
    MAX_INPUT_LENGTH,
    AliasKind,
    MatchKind,
    OfficialList,
    OfficialListError,
    edit_distance,
    load_official_list,
    name_key,
)

EXPECTED_COUNT = 342

OFFICIAL_LIST = load_official_list()
OFFICIAL_NAMES = sorted(municipality.name for municipality in OFFICIAL_LIST)

# Municipalities formed by the most recent mergers, which must be on the list.
FORMED_BY_MERGERS = {
    "GM1992": "Voorne aan Zee",  # 1 January 2023
    "GM1991": "Maashorst",  # 1 January 2022
    "GM1982": "Land van Cuijk",  # 1 January 2022
    "GM1980": "Dijk en Waard",  # 1 January 2022
    "GM1979": "Eemsdelta",  # 1 January 2021
}

# Municipalities that merged into another one and must be gone from the list.
MERGED_AWAY = {
    "GM0501": "Brielle",
    "GM0530": "Hellevoetsluis",
    "GM0614": "Westvoorne",
    "GM0457": "Weesp",
    "GM0398": "Heerhugowaard",
    "GM0416": "Langedijk",
    "GM0856": "Uden",
    "GM1685": "Landerd",
    "GM1684": "Cuijk",
    "GM0370": "Beemster",
}

KNOWN_CODES = {
    "GM0363": "Amsterdam",
    "GM0599": "Rotterdam",
    "GM0518": "'s-Gravenhage",
    "GM0796": "'s-Hertogenbosch",
    "GM0014": "Groningen",
    "GM0344": "Utrecht",
    "GM0193": "Zwolle",
    "GM0080": "Leeuwarden",
    "GM0373": "Bergen (NH.)",
    "GM0893": "Bergen (L.)",
    "GM0164": "Hengelo (O.)",
    "GM1900": "Súdwest-Fryslân",
    "GM0820": "Nuenen, Gerwen en Nederwetten",
}

EXACT_MATCHES = [
    ("Den Bosch", "GM0796"),
    ("den bosch", "GM0796"),
    ("'s-Hertogenbosch", "GM0796"),
    ("s Hertogenbosch", "GM0796"),
    ("Den Hertogenbosch", "GM0796"),
    ("Hertogenbosch", "GM0796"),
    ("den haag", "GM0518"),
    ("Den Haag", "GM0518"),
    ("'s Gravenhage", "GM0518"),
    ("s-gravenhage", "GM0518"),
    ("\u2019s-Gravenhage", "GM0518"),
    ("sgravenhage", "GM0518"),
    ("Gemeente 's-Gravenhage", "GM0518"),
    ("The Hague", "GM0518"),
    ("Sudwest Fryslan", "GM1900"),
    ("Súdwest-Fryslân", "GM1900"),
    ("SUDWEST-FRYSLAN", "GM1900"),
    ("Zuidwest-Friesland", "GM1900"),
    ("AMSTERDAM", "GM0363"),
    ("  amsterdam  ", "GM0363"),
    ("gemeente Amsterdam", "GM0363"),
    ("Groningen", "GM0014"),
    ("Groningen (gemeente)", "GM0014"),
    ("Utrecht", "GM0344"),
    ("Bergen (NH.)", "GM0373"),
    ("Bergen (NH)", "GM0373"),
    ("bergen nh", "GM0373"),
    ("Bergen N.H.", "GM0373"),
    ("Bergen Noord-Holland", "GM0373"),
    ("Bergen (L.)", "GM0893"),
    ("Bergen L", "GM0893"),
    ("Bergen Limburg", "GM0893"),
    ("Bergen op Zoom", "GM0748"),
    ("Hengelo (O.)", "GM0164"),
    ("Hengelo O", "GM0164"),
    ("Hengelo (Gld.)", "GM1876"),
    ("Ljouwert", "GM0080"),
    ("Snits", "GM1900"),
    ("Hellevoetsluis", "GM1992"),
    ("Brielle", "GM1992"),
    ("Weesp", "GM0363"),
    ("Uden", "GM1991"),
    ("Nuenen", "GM0820"),
    ("Nuenen Gerwen en Nederwetten", "GM0820"),
    ("Capelle a/d IJssel", "GM0502"),
    ("Rijswijk", "GM0603"),
    ("Middelburg", "GM0687"),
    ("Den Helder", "GM0400"),
    ("IJsselstein", "GM0353"),
    ("ijsselstein", "GM0353"),
]

FUZZY_MATCHES = [
    ("Amsterdm", "GM0363", 1),
    ("Rotterdm", "GM0599", 1),
    ("Zwole", "GM0193", 1),
    ("Amstredam", "GM0363", 1),
    ("Leeuwarde", "GM0080", 1),
    ("Den Bosh", "GM0796", 1),
    ("Sudwest Frislan", "GM1900", 1),
    ("St. Michielsgestel", "GM0845", 2),
]

AMBIGUOUS_MATCHES = [
    ("Bergen", {"GM0373", "GM0893"}),
    ("bergen", {"GM0373", "GM0893"}),
    ("Hengelo", {"GM0164", "GM1876"}),
    ("Alphen", {"GM0484", "GM1723"}),
    ("Haaren", {"GM0757", "GM0824", "GM0855", "GM0865"}),
    ("Winsum", {"GM1966", "GM1969"}),
]

NO_MATCHES = [
    "xyz",
    "",
    "   ",
    "'-.",
    "gemeente",
    "Emen",
    "Nederland",
    "Friesland",
    "weet ik niet",
    "Amsterdam Noord",
    "🏠",
]


def read_data(name: str) -> Any:
    text = resources.files("journey.data").joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


def minimal_list(entries: list[dict[str, Any]], count: int | None = None) -> Any:
    return {
        "reference_date": "2026-01-01",
        "source": "test",
        "count": len(entries) if count is None else count,
        "municipalities": entries,
    }


TWO_MUNICIPALITIES = [
    {"code": "GM0363", "name": "Amsterdam"},
    {"code": "GM0599", "name": "Rotterdam"},
]


# The data file.


def test_file_count_matches_entries() -> None:
    document = read_data("gemeenten.json")
    assert document["count"] == EXPECTED_COUNT
    assert len(document["municipalities"]) == EXPECTED_COUNT


def test_file_codes_well_formed() -> None:
    document = read_data("gemeenten.json")
    for entry in document["municipalities"]:
        assert re.fullmatch(r"GM\d{4}", entry["code"]), entry


def test_file_codes_unique() -> None:
    codes = [entry["code"] for entry in read_data("gemeenten.json")["municipalities"]]
    assert len(set(codes)) == len(codes)


def test_file_names_unique() -> None:
    names = [entry["name"] for entry in read_data("gemeenten.json")["municipalities"]]
    assert len(set(names)) == len(names)


def test_file_states_reference_date() -> None:
    assert read_data("gemeenten.json")["reference_date"] == "2026-01-01"


def test_file_names_its_source() -> None:
    document = read_data("gemeenten.json")
    assert "86247NED" in document["source"]
    assert document["source_url"].startswith("https://www.cbs.nl/")
    assert document["note"]


# The loaded list.


def test_list_loads_expected_count() -> None:
    assert len(OFFICIAL_LIST) == EXPECTED_COUNT


def test_list_reference_date() -> None:
    assert OFFICIAL_LIST.reference_date == datetime.date(2026, 1, 1)


def test_list_load_is_cached() -> None:
    assert load_official_list() is OFFICIAL_LIST


@pytest.mark.parametrize(("code", "name"), sorted(FORMED_BY_MERGERS.items()))
def test_list_contains_merged_municipality(code: str, name: str) -> None:
    municipality = OFFICIAL_LIST.get(code)
    assert municipality is not None
    assert municipality.name == name


@pytest.mark.parametrize(("code", "name"), sorted(MERGED_AWAY.items()))
def test_list_lacks_former_municipality(code: str, name: str) -> None:
    assert code not in OFFICIAL_LIST, name


@pytest.mark.parametrize(("code", "name"), sorted(KNOWN_CODES.items()))
def test_list_known_code_and_name(code: str, name: str) -> None:
    municipality = OFFICIAL_LIST.get(code)
    assert municipality is not None
    assert municipality.name == name


def test_list_aliases_name_listed_codes() -> None:
    assert OFFICIAL_LIST.aliases
    for alias in OFFICIAL_LIST.aliases:
        for code in alias.codes:
            assert code in OFFICIAL_LIST, alias


def test_names_fit_input_length_limit() -> None:
    names = [municipality.name for municipality in OFFICIAL_LIST]
    names += [alias.text for alias in OFFICIAL_LIST.aliases]
    assert max(len(name) for name in names) < MAX_INPUT_LENGTH


def test_former_municipality_alias_has_date() -> None:
    result = OFFICIAL_LIST.match("Hellevoetsluis")
    assert result.alias is not None
    assert result.alias.kind is AliasKind.FORMER_MUNICIPALITY
    assert result.alias.merged_on == datetime.date(2023, 1, 1)


# Matching.


@pytest.mark.parametrize(("text", "code"), EXACT_MATCHES)
def test_match_exact(text: str, code: str) -> None:
    result = OFFICIAL_LIST.match(text)
    assert result.kind is MatchKind.EXACT
    assert result.municipality is not None
    assert result.municipality.code == code
    assert result.distance == 0


@pytest.mark.parametrize(("text", "code", "distance"), FUZZY_MATCHES)
def test_match_fuzzy(text: str, code: str, distance: int) -> None:
    result = OFFICIAL_LIST.match(text)
    assert result.kind is MatchKind.FUZZY
    assert result.municipality is not None
    assert result.municipality.code == code
    assert result.distance == distance


def test_zwole_fuzzy_is_zwolle() -> None:
    result = OFFICIAL_LIST.match("Zwole")
    assert result.kind is MatchKind.FUZZY
    assert result.municipality is not None
    assert result.municipality.name == "Zwolle"


@pytest.mark.parametrize(("text", "codes"), AMBIGUOUS_MATCHES)
def test_match_ambiguous(text: str, codes: set[str]) -> None:
    result = OFFICIAL_LIST.match(text)
    assert result.kind is MatchKind.AMBIGUOUS
    assert {candidate.code for candidate in result.candidates} == codes
    assert result.municipality is None


def test_bergen_offers_both_bergens() -> None:
    result = OFFICIAL_LIST.match("Bergen")
    names = [candidate.name for candidate in result.candidates]
    assert names == ["Bergen (L.)", "Bergen (NH.)"]


def test_typo_in_bergen_stays_ambiguous() -> None:
    result = OFFICIAL_LIST.match("Bergn")
    assert result.kind is MatchKind.AMBIGUOUS
    assert {candidate.code for candidate in result.candidates} == {"GM0373", "GM0893"}
    assert result.distance == 1


@pytest.mark.parametrize("text", NO_MATCHES)
def test_match_none(text: str) -> None:
    result = OFFICIAL_LIST.match(text)
    assert result.kind is MatchKind.NONE
    assert result.candidates == ()
    assert result.municipality is None


def test_short_input_gets_no_typo_tolerance() -> None:
    assert OFFICIAL_LIST.match("Edr").kind is MatchKind.NONE
    assert OFFICIAL_LIST.match("Omen").kind is MatchKind.NONE


def test_garbage_of_200_characters_is_fast_none() -> None:
    generator = random.Random(20260101)
    alphabet = string.ascii_letters + string.digits + " '-."
    garbage = "".join(generator.choice(alphabet) for _ in range(200))

    started = time.perf_counter()
    result = OFFICIAL_LIST.match(garbage)
    elapsed = time.perf_counter() - started

    assert result.kind is MatchKind.NONE
    assert elapsed < 0.05


def test_garbage_below_length_limit_is_fast_none() -> None:
    generator = random.Random(342)
    garbage = "".join(generator.choice(string.ascii_lowercase) for _ in range(90))

    started = time.perf_counter()
    result = OFFICIAL_LIST.match(garbage)
    elapsed = time.perf_counter() - started

    assert result.kind is MatchKind.NONE
    assert elapsed < 0.05


def test_candidates_never_exceed_maximum() -> None:
    for text in ["Bergen", "Haaren", "Berge", "Hengel", "Alphe", "Winsm", "Amstrdam"]:
        assert len(OFFICIAL_LIST.match(text).candidates) <= MAX_CANDIDATES, text


def test_fuzzy_candidates_ordered_by_distance() -> None:
    result = OFFICIAL_LIST.match("Hoeksewaard")
    assert result.kind is MatchKind.FUZZY
    assert result.candidates[0].code == "GM1963"
    assert result.distance == 2


@given(
    st.sampled_from(OFFICIAL_NAMES),
    st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_official_name_any_case_is_exact(name: str, upper: list[bool]) -> None:
    typed = "".join(
        char.upper() if flip else char.lower()
        for char, flip in zip(name, upper, strict=False)
    )
    result = OFFICIAL_LIST.match(typed)
    assert result.kind is MatchKind.EXACT
    assert result.municipality is not None
    assert result.municipality.name == name


@given(st.sampled_from(OFFICIAL_NAMES))
def test_official_name_without_accents_is_exact(name: str) -> None:
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(char for char in decomposed if not unicodedata.combining(char))
    result = OFFICIAL_LIST.match(plain)
    assert result.municipality is not None
    assert result.municipality.name == name


# Normalisation and distance.


def test_name_key_folds_punctuation_and_accents() -> None:
    assert name_key("Súdwest-Fryslân") == "sudwestfryslan"
    assert name_key("'s-Gravenhage") == "sgravenhage"
    assert name_key("Gemeente Bergen (NH.)") == "bergennh"


def test_edit_distance_counts_swap_once() -> None:
    assert edit_distance("zwolle", "zowlle", 2) == 1


def test_edit_distance_counts_insert_and_delete() -> None:
    assert edit_distance("zwole", "zwolle", 2) == 1
    assert edit_distance("amsterdam", "amsterdm", 2) == 1


def test_edit_distance_above_limit_is_none() -> None:
    assert edit_distance("rotterdam", "amsterdam", 2) is None
    assert edit_distance("ede", "edamvolendam", 2) is None


# Validation of the data files.


def test_invalid_code_is_rejected() -> None:
    document = minimal_list([{"code": "GM363", "name": "Amsterdam"}])
    with pytest.raises(OfficialListError, match="GM363"):
        OfficialList.from_documents(document)


def test_duplicate_code_is_rejected() -> None:
    entries = [
        {"code": "GM0363", "name": "Amsterdam"},
        {"code": "GM0363", "name": "Rotterdam"},
    ]
    with pytest.raises(OfficialListError, match="appears twice"):
        OfficialList.from_documents(minimal_list(entries))


def test_count_mismatch_is_rejected() -> None:
    document = minimal_list(TWO_MUNICIPALITIES, count=3)
    with pytest.raises(OfficialListError, match="'count' is 3"):
        OfficialList.from_documents(document)


def test_missing_reference_date_is_rejected() -> None:
    document = minimal_list(TWO_MUNICIPALITIES)
    del document["reference_date"]
    with pytest.raises(OfficialListError, match="reference_date"):
        OfficialList.from_documents(document)


def test_alias_with_unknown_code_is_rejected() -> None:
    aliases = {"aliases": [{"alias": "Mokum", "codes": ["GM9999"], "kind": "place"}]}
    with pytest.raises(OfficialListError, match="GM9999"):
        OfficialList.from_documents(minimal_list(TWO_MUNICIPALITIES), aliases)


def test_alias_spelled_like_official_name_is_rejected() -> None:
    aliases = {
        "aliases": [{"alias": "ROTTERDAM", "codes": ["GM0363"], "kind": "place"}]
    }
    with pytest.raises(OfficialListError, match="official name of GM0599"):
        OfficialList.from_documents(minimal_list(TWO_MUNICIPALITIES), aliases)


def test_alias_with_unknown_kind_is_rejected() -> None:
    aliases = {"aliases": [{"alias": "Mokum", "codes": ["GM0363"], "kind": "slang"}]}
    with pytest.raises(OfficialListError, match="'kind' must be one of"):
        OfficialList.from_documents(minimal_list(TWO_MUNICIPALITIES), aliases)


def test_former_municipality_needs_merge_date() -> None:
    aliases = {
        "aliases": [
            {"alias": "Weesp", "codes": ["GM0363"], "kind": "former_municipality"}
        ]
    }
    with pytest.raises(OfficialListError, match="merged_on"):
        OfficialList.from_documents(minimal_list(TWO_MUNICIPALITIES), aliases)


def test_small_list_matches_its_alias() -> None:
    aliases = {"aliases": [{"alias": "Mokum", "codes": ["GM0363"], "kind": "place"}]}
    official_list = OfficialList.from_documents(
        minimal_list(TWO_MUNICIPALITIES), aliases
    )
    result = official_list.match("mokum")
    assert result.kind is MatchKind.EXACT
    assert result.municipality is not None
    assert result.municipality.code == "GM0363"
