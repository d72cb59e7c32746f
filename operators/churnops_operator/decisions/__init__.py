"""Pure decisions: spec, observed state and metrics in; the next status and the desired objects out.

Nothing here imports a client library or does I/O (import-linter checks it).
"""
