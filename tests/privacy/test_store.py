"""The privacy store and the server's cached views, across two connections as across two processes.

A server caches subject keys and the suppression list; ``privacy erase`` runs
elsewhere. The clock is the test's: the views look at the store again only
once their interval has passed, and then never reuse a shredded key.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from churnops.privacy.cached import Pseudonyms, Suppression
from churnops.privacy.keys import ErasedCustomerError, erasure_token, subject
from churnops.privacy.store import PostgresPrivacyStore, PrivacyStore, SqlitePrivacyStore
from tests.support.services import DEFAULT_ADMIN_DSN, temporary_database


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[PrivacyStore, PrivacyStore]]:
    """Two connections to one store: the server's and the erasing command's."""
    if request.param == "sqlite":
        a: PrivacyStore = SqlitePrivacyStore(tmp_path / "privacy" / "privacy.db")
        b: PrivacyStore = SqlitePrivacyStore(tmp_path / "privacy" / "privacy.db")
        yield a, b
        a.close()
        b.close()
        return
    with temporary_database(DEFAULT_ADMIN_DSN, prefix="churnops_privacy") as name:
        dsn = f"{DEFAULT_ADMIN_DSN} dbname={name}"
        a, b = PostgresPrivacyStore(dsn), PostgresPrivacyStore(dsn)
        yield a, b
        a.close()
        b.close()


def test_both_connections_share_one_key_per_customer_and_one_store_key(two_stores: tuple[PrivacyStore, PrivacyStore]) -> None:
    server, eraser = two_stores
    assert server.subject_key(7) == eraser.subject_key(7)  # insert-or-ignore: the second creator reads the first key
    assert server.subject_key(7) != server.subject_key(8)
    assert server.store_key() == eraser.store_key()


def test_after_an_erasure_elsewhere_the_server_gives_a_new_pseudonym_within_its_interval(
    two_stores: tuple[PrivacyStore, PrivacyStore],
) -> None:
    server, eraser = two_stores
    clock = Clock()
    names = Pseudonyms(server, every_s=1.0, clock=clock)
    before = names.subject(7)
    other = names.subject(8)
    assert before == subject(eraser.subject_key(7), 7)
    assert eraser.shred(7) and not eraser.shred(7)
    clock.now += 0.5
    assert names.subject(7) == before  # within the interval the cache answers (the shredded key links nothing now)
    clock.now += 0.5
    after = names.subject(7)
    assert after not in (None, before)  # a new key, never the shredded one
    assert after == subject(eraser.subject_key(7), 7)
    assert names.subject(8) == other  # the others keep theirs
    assert names.subject(None) is None  # features sent without an id name no subject


def test_the_writers_view_sees_a_suppression_once_its_interval_has_passed(two_stores: tuple[PrivacyStore, PrivacyStore]) -> None:
    server, eraser = two_stores
    clock = Clock()
    view = Suppression(server, every_s=1.0, clock=clock)
    assert view.erased([7, 8]) == set()
    assert eraser.suppress(erasure_token(eraser.store_key(), 7))
    assert not eraser.suppress(erasure_token(eraser.store_key(), 7))  # listed once
    assert view.erased([7, 8]) == set()
    clock.now += 1.0
    assert view.erased([7, 8, 9]) == {7}


def test_the_embedded_store_keeps_no_id_of_an_erased_customer(tmp_path: Path) -> None:
    path = tmp_path / "privacy.db"
    store = SqlitePrivacyStore(path)
    reader = SqlitePrivacyStore(path)  # a server's connection stays open meanwhile
    shredded = reader.subject_key(100015)
    store.subject_key(100016)
    store.suppress(erasure_token(store.store_key(), 100015))
    store.shred(100015)
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("privacy.db"))
    assert shredded not in on_disk  # overwritten, not left in a free page or in the write-ahead log
    store.close()
    reader.close()
    conn = sqlite3.connect(path)
    ids = {r[0] for r in conn.execute("SELECT customer_id FROM subject_keys")}
    erased = [r[0] for r in conn.execute("SELECT token FROM erased")]
    conn.close()
    assert ids == {100016}
    assert len(erased) == 1 and "100015" not in erased[0]
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only


def test_an_erased_customer_gets_no_new_key_and_the_view_refuses_them(two_stores: tuple[PrivacyStore, PrivacyStore]) -> None:
    """Traffic that still names an erased customer (with its features) must not re-create a key that links it again."""
    server, eraser = two_stores
    clock = Clock()
    names = Pseudonyms(server, every_s=1.0, clock=clock)
    names.subject(7)
    assert eraser.suppress(erasure_token(eraser.store_key(), 7)) and eraser.shred(7)
    with pytest.raises(ErasedCustomerError):  # the store refuses even before the cached view has noticed
        server.subject_key(7)
    clock.now += 1.0
    assert names.erased([7, 8]) == {7}
    with pytest.raises(ErasedCustomerError, match="erased"):
        names.subject(7)
    assert names.subject(8) is not None
    with pytest.raises(ErasedCustomerError):
        eraser.subject_key(7)


def _suppress_uncommitted(store: PrivacyStore, token: str, dsn: str | None, path: Path | None) -> Any:
    """Another connection that has listed ``token`` and holds its transaction open (an erasure mid-commit)."""
    if dsn is not None:
        conn: Any = psycopg.connect(dsn)
        conn.execute("INSERT INTO churnops_erased_subjects (token) VALUES (%s)", (token,))
        conn.execute("UPDATE churnops_privacy_meta SET generation = generation + 1 WHERE name = 'store'")
        return conn
    assert path is not None
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO erased (token, erased_at) VALUES (?, 0)", (token,))
    conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'")
    return conn


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_key_request_racing_the_suppression_waits_for_it_and_is_refused(kind: str, tmp_path: Path) -> None:
    """Check and insert are one transaction that serialises with the suppression: no key slips in between."""
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            dsn, path = None, tmp_path / "privacy.db"
            store: PrivacyStore = SqlitePrivacyStore(path)
        else:
            name = stack.enter_context(temporary_database(DEFAULT_ADMIN_DSN, prefix="churnops_privacy"))
            dsn, path = f"{DEFAULT_ADMIN_DSN} dbname={name}", None
            store = PostgresPrivacyStore(dsn)
        stack.callback(store.close)
        eraser = _suppress_uncommitted(store, erasure_token(store.store_key(), 7), dsn, path)
        outcome: list[object] = []
        racer = threading.Thread(target=lambda: outcome.append(_attempt(store, 7)))
        racer.start()
        racer.join(timeout=1.0)  # a store that does not wait for the suppression has created the key by now
        eraser.execute("COMMIT") if kind == "sqlite" else eraser.commit()
        racer.join()
        eraser.close()
        assert outcome == ["refused"]
        assert _key_rows(dsn, path, 7) == 0


def _attempt(store: PrivacyStore, customer_id: int) -> str:
    try:
        store.subject_key(customer_id)
    except ErasedCustomerError:
        return "refused"
    return "created"


def _key_rows(dsn: str | None, path: Path | None, customer_id: int) -> int:
    if dsn is not None:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM churnops_subject_keys WHERE customer_id = %s", (customer_id,)).fetchone()
    else:
        assert path is not None
        conn2 = sqlite3.connect(path)
        row = conn2.execute("SELECT count(*) FROM subject_keys WHERE customer_id = ?", (customer_id,)).fetchone()
        conn2.close()
    assert row is not None
    return int(row[0])
