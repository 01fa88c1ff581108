"""Every PostgreSQL advisory-lock key the collector takes, in one place, so that
no two uses pick the same one. The fixed keys share the prefix 7262."""

from __future__ import annotations

# Session-scoped around `alembic upgrade` (db/migrate.py): one migrator at a time.
MIGRATIONS_LOCK = 7262001
# Taken (transaction-scoped) right before events are inserted and held until commit,
# so revisions become visible in increasing order: a reader that saw revision N
# can never later find a committed event below N.
EVENTS_LOCK = 7262002
# The first key of the per-batch linking locks (the second is the batch id's hash).
LINK_LOCK = 7262003
# The seed of hashtextextended(name, seed): the key of the per-name lock that
# gives concurrent creates of one template name consecutive versions.
TEMPLATE_NAME_SEED = 17
