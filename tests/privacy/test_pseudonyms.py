"""The pure parts of erasure: pseudonyms, erasure tokens, the refresh rule, and what a file loses."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnops.errors import InvalidInputError
from churnops.privacy.files import action_for, drop_json_lines, drop_lines, mentions, redact
from churnops.privacy.keys import SUBJECT_HEX, customer_id_of, erased_among, erasure_token, new_key, refresh_due, subject


def test_a_subject_depends_on_the_customers_own_key_and_never_shows_the_id() -> None:
    k1, k2 = new_key(), new_key()
    s = subject(k1, 100015)
    assert s == subject(k1, 100015) and len(s) == SUBJECT_HEX
    assert s != subject(k2, 100015)  # a new key is a new pseudonym: the old records stay unlinkable
    assert s != subject(k1, 100016)
    assert "100015" not in s


def test_erasure_tokens_are_keyed_and_match_only_listed_customers() -> None:
    key = new_key()
    tokens = {erasure_token(key, 7), erasure_token(key, 12)}
    assert erased_among([1, 7, 7, 12, 13], tokens, key) == {7, 12}
    assert erased_among([7], tokens, new_key()) == set()  # another store key recognises no one
    assert erased_among([7, 12], set(), key) == set()
    assert all(t != "7" and len(t) == 64 for t in tokens)


def test_the_store_is_polled_at_most_once_per_interval() -> None:
    assert refresh_due(None, 5.0, 1.0)
    assert not refresh_due(5.0, 5.9, 1.0)
    assert refresh_due(5.0, 6.0, 1.0)


@pytest.mark.parametrize("bad", [-1, 2**63, "12", 1.0, True, None])
def test_a_customer_id_is_a_non_negative_integer(bad: object) -> None:
    with pytest.raises(InvalidInputError) as e:
        customer_id_of(bad)
    assert e.value.field == "--customer"


def test_mentions_match_the_whole_number_only() -> None:
    assert mentions("online: customer 100015 72.1% (high)", 100015)
    assert mentions("<td>100015</td>", 100015)
    assert not mentions("1000150 rows", 100015)
    assert not mentions("sha 9a100015ff", 100015)
    assert not mentions("p = 0.100015", 100015)
    assert not mentions("100015.5 EUR", 100015)
    assert mentions("online: customer 3 (high)", 3) and mentions('"customer_id": 3}', 3)
    assert not mentions("<td>3</td> rows", 3)  # a short id counts only next to the word customer


def test_json_redaction_removes_records_and_ids_about_the_customer_only() -> None:
    doc = {
        "join": {"unknown_customers": [100015, 100016], "unknown": 2},
        "rows": [{"customer_id": 100015, "score": 0.9}, {"customer_id": 100016, "score": 0.1}],
        "customer": "100015",
        "count": 100015,  # a figure that happens to equal the id is not about the customer
    }
    out, n = redact(doc, 100015)
    assert out == {
        "join": {"unknown_customers": [100016], "unknown": 2},
        "rows": [{"customer_id": 100016, "score": 0.1}],
        "customer": None,
        "count": 100015,
    }
    assert n == 3


def test_lines_naming_the_customer_go() -> None:
    text = "start\nonline: customer 100015 high\ncustomer 100016 low\n"
    assert drop_lines(text, 100015) == ("start\ncustomer 100016 low\n", 1)
    jsonl = '{"customer_id": 100015, "x": 1}\n{"customer_id": 100016}\n{"kind": "batch", "customers": [100015, 3]}\n'
    out, n = drop_json_lines(jsonl, 100015)
    assert n == 2 and '"customer_id": 100016' in out and "100015" not in out


@pytest.mark.parametrize(
    ("name", "action"),
    [
        ("scores.parquet", "rows"),
        ("labels.CSV", "rows"),
        ("r.json", "json"),
        ("t.jsonl", "jsonl"),
        ("p.log", "lines"),
        ("r.html", "delete"),
    ],
)
def test_each_kind_of_file_has_its_action(name: str, action: str) -> None:
    assert action_for(Path(name)) == action
    assert action_for(Path("plot.png")) == "skip"
