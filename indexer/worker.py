"""Builds the index handler with both database pools, closed when the stage stops."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from common import clients
from common import settings as s
from common.db.main_repository import MainRepository
from common.db.vector_repository import HnswParameters, VectorRepository
from indexer.stage import IndexHandler


@contextmanager
def index_handler() -> Iterator[IndexHandler]:
    database = s.load(s.DatabaseSettings)
    pipeline = s.load(s.PipelineSettings)
    store = clients.object_store(s.load(s.S3Settings))
    with clients.main_db_pool(database) as main_pool, clients.vector_db_pool(database) as vector_pool:
        yield IndexHandler(
            MainRepository(main_pool),
            VectorRepository(vector_pool, HnswParameters.from_settings(s.load(s.SearchIndexSettings))),
            store,
            pipeline.similarity_threshold,
        )
