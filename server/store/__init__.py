"""The gateway's store: SQLAlchemy models, Alembic migrations and the queries over them."""

# log_tables and tenancy_tables are imported for their tables: they join Base.metadata
# wherever the store is used.
from gemini_gateway.server.store import log_tables as log_tables
from gemini_gateway.server.store import tenancy_tables as tenancy_tables
from gemini_gateway.server.store.engine import DEFAULT_URL, Store, StoreError, open_store

__all__ = ["DEFAULT_URL", "Store", "StoreError", "log_tables", "open_store", "tenancy_tables"]
