"""The gateway's store: SQLAlchemy models, Alembic migrations and the queries over them."""

from gemini_gateway.server.store.engine import DEFAULT_URL, Store, StoreError, open_store

__all__ = ["DEFAULT_URL", "Store", "StoreError", "open_store"]
