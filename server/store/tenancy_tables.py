"""Who owns what upstream: the project that created each tuned model and batch.

The upstream (Gemini API) knows one owner for everything the gateway creates: the gateway's
own API key. So the gateway keeps the project of each caller that created a tuned model
(CreateTunedModel, DatasetService.CreateTunedModelFromDataset) or a batch
(BatchGenerateContent, dataset re-runs in BATCH mode), keyed by the resource name, and
refuses other projects' callers on it (server/tenancy.py). A row outlives the resource: a
deleted model's name stays its project's, so its owner gets NOT_FOUND from the upstream and
everyone else PERMISSION_DENIED, until someone creates a model under that name again.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from gemini_gateway.server.store.models import Base, UTCDateTime


class ResourceOwner(Base):
    """The project (and caller) that created an upstream resource, by its name."""

    __tablename__ = "resource_owners"

    # `tunedModels/{id}` or `batches/{id}`.
    name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    project: Mapped[str] = mapped_column(sa.String())
    caller: Mapped[str] = mapped_column(sa.String())
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
