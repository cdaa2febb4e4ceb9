"""The integration tests' own databases: each test module that stores people, faces or embeddings gets a main and a
vector database of its own, so that its packs and galleries never reach another module's searches and counts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from common import clients
from common.db.main_repository import MainRepository
from common.db.vector_repository import VectorRepository
from common.settings import DatabaseSettings
from indexer.gallery_feed import GalleryFeed
from operations.services import LocalServices
from tests.conftest import migrated_databases


@pytest.fixture(scope="module")
def module_databases(services: LocalServices, request: pytest.FixtureRequest) -> DatabaseSettings:
    """The module's two databases, new and migrated, named after it (test_erasure: fecapass_erasure_main, ...)."""
    return migrated_databases(services, request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))


@pytest.fixture(scope="module")
def repositories(module_databases: DatabaseSettings) -> Iterator[tuple[MainRepository, VectorRepository]]:
    """The product's repositories over the module's own databases, on pools open for the module's tests."""
    with clients.main_db_pool(module_databases) as main_pool, clients.vector_db_pool(module_databases) as vector_pool:
        yield MainRepository(main_pool), VectorRepository(vector_pool)


@pytest.fixture
def pack() -> str:
    """A pack of the test's own: its gallery, its partial HNSW index and its codes hold exactly what it enrolled."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def feed(redis_client: redis.Redis) -> GalleryFeed:
    """A gallery feed on a stream of the test's own: no other test's enrolls and erasures reach its index."""
    return GalleryFeed(redis_client, stream=f"fecapass:gallery:test:{uuid.uuid4().hex[:8]}")
