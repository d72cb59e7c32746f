"""Privacy: pseudonymous subjects for the audit trail, and the record of erased customers.

The audit trail must stay verifiable (a hash chain cannot lose records) yet
must not keep a customer linkable once they asked to be erased. Audit records
therefore name a *subject*, an HMAC of the customer id under a random key per
customer (``keys``); the keys live in a store outside the audit directory
(``store``), and erasing a customer deletes their key (crypto-shredding). The
same store keeps the list of erased customers as keyed hashes, which the
prediction log's writer consults so that rows still in flight are dropped
(``cached``). ``files`` removes a customer from the files under the data
directory (Parquet, CSV, JSON, logs, reports).

This package sits below monitoring and serving, which both use it, and
imports only the data layer.
"""
