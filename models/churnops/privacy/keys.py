"""The pure part of pseudonymisation: subjects, erasure tokens and the checks that use them.

Two keyed hashes with different purposes:
- a *subject* is ``HMAC-SHA256(k_c, customer id)`` under the customer's own
  random key ``k_c``: deleting ``k_c`` makes every audit record of the
  customer unlinkable while the chain stays intact;
- an *erasure token* is ``HMAC-SHA256(store key, "erased:" + customer id)``
  under one long-lived store key: what the suppression list keeps, so that
  rows of an erased customer can be recognised without keeping the id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Set

from churnops.errors import InvalidInputError, NotFoundError

KEY_BYTES = 32
SUBJECT_HEX = 32  # 128 bits: collisions are out of reach for any customer base, and records stay short
_TOKEN_PREFIX = b"erased:"


class ErasedCustomerError(NotFoundError):
    """The customer was erased: nothing is scored or keyed for them again (404, as for a customer never known)."""


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def customer_id_of(value: object, field: str = "--customer") -> int:
    """A customer id as the stores hold it (a non-negative 64-bit integer); a clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"a customer id is an integer, got {value!r}", field=field)
    if not 0 <= value < 2**63:
        raise InvalidInputError(f"a customer id is a non-negative 64-bit integer, got {value}", field=field)
    return value


def subject(key: bytes, customer_id: int) -> str:
    """The audit trail's pseudonym of a customer under their key (truncated hex)."""
    return hmac.new(key, str(customer_id).encode(), hashlib.sha256).hexdigest()[:SUBJECT_HEX]


def erasure_token(store_key: bytes, customer_id: int) -> str:
    """The suppression list's keyed hash of an erased customer (never the id itself)."""
    return hmac.new(store_key, _TOKEN_PREFIX + str(customer_id).encode(), hashlib.sha256).hexdigest()


def erased_among(customer_ids: Iterable[int], tokens: Set[str], store_key: bytes) -> set[int]:
    """The ids among ``customer_ids`` whose token is on the suppression list (each distinct id hashed once)."""
    if not tokens:
        return set()
    return {cid for cid in set(customer_ids) if erasure_token(store_key, cid) in tokens}


def refresh_due(last_check: float | None, now: float, every_s: float) -> bool:
    """Whether a cached view must look at the store again: never checked, or ``every_s`` elapsed."""
    return last_check is None or now - last_check >= every_s
