"""Builds the index handler with both database pools, closed when the stage stops."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from common import clients
from common import settings as s
from common.db.main_repository import MainRepository
from common.db.vector_repository import HnswParameters, VectorRepository
from common.objects import ObjectStore
from common.transient import TransientStore
from indexer.binary_index import BinaryIndex
from indexer.gallery_feed import GalleryFeed
from indexer.stage import IndexHandler


@contextmanager
def index_handler() -> Iterator[IndexHandler]:
    database = s.load(s.DatabaseSettings)
    pipeline = s.load(s.PipelineSettings)
    s3 = s.load(s.S3Settings)
    store = clients.object_store(s3)
    # Webhook bodies carry the photo URLs clients would get from the API: signed for the public endpoint.
    presigner = ObjectStore(clients.minio_client(s3, public=True), s3.s3_bucket)
    expires = timedelta(seconds=pipeline.presign_seconds)
    search = s.load(s.SearchIndexSettings)
    redis_client = clients.redis_client(s.load(s.RedisSettings))
    feed = GalleryFeed(redis_client)
    transient = TransientStore(redis_client, pipeline.transient_ttl_seconds)
    with (
        clients.main_db_pool(database, stage=True) as main_pool,
        clients.vector_db_pool(database, stage=True) as vector_pool,
    ):
        vectors = VectorRepository(vector_pool, HnswParameters.from_settings(search))
        binary = BinaryIndex(vectors, feed, search.binary_candidates) if search.search_index == "binary" else None
        if binary is not None:
            # Load the active pack's codes now rather than in the first search (a million: a few seconds).
            active = vectors.active()
            if active is not None:
                binary.load(*active)
        yield IndexHandler(
            MainRepository(main_pool),
            vectors,
            store,
            pipeline.similarity_threshold,
            presign=lambda key: presigner.presigned_url(key, expires),
            false_matches_per_search=pipeline.false_matches_per_search,
            feed=feed,
            binary=binary,
            transient=transient,
        )
