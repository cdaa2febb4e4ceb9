"""Settings, one class per concern, read from ``FECAPASS_*`` environment variables (and ``.env``).

Secrets (database DSNs, S3 keys) have no defaults: a missing one stops the process at start-up
with the variable's name. Every other setting has a default that works for a local run.
Each process builds only the classes it needs in ``main()`` and passes them down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FECAPASS_"


class _Base(BaseSettings):
    # An empty variable means "the default", as `FOO=` in .env or `${FOO:-}` in compose.yaml write it.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", env_ignore_empty=True)


class RedisSettings(_Base):
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The API's connections: past the limit a command waits (up to the pool timeout) for a free one instead of
    # failing, so hundreds of waiting requests share a few connections; a command that gets no answer within the
    # socket timeout is an outage (503), never a request hanging on a dead server.
    redis_max_connections: int = Field(default=64, ge=2)
    redis_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    redis_socket_timeout_seconds: float = Field(default=10.0, gt=0)


class S3Settings(_Base):
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: SecretStr
    s3_secret_key: SecretStr
    s3_bucket: str = "fecapass"
    s3_region: str = "us-east-1"
    s3_secure: bool = False
    # Endpoint clients reach for photo URLs, when it differs from the one the services use (e.g. in compose).
    s3_public_endpoint: str = ""


class DatabaseSettings(_Base):
    main_db_dsn: SecretStr = Field(description="PostgreSQL DSN of the main database (users, faces)")
    vector_db_dsn: SecretStr = Field(description="PostgreSQL DSN of the pgvector database; may be the main one")
    db_pool_min: int = 1
    db_pool_max: int = 8
    # How long a request waits for a pooled connection (all busy, or the database down) before it is a 503.
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    # PostgreSQL ends a session that sits this long inside a transaction. None of ours pauses between statements for
    # more than milliseconds; a process frozen mid-transaction (SIGSTOP, a paused VM) would otherwise hold its row
    # locks until it is killed, and the consumer that claimed its entries would wait on them for as long.
    db_idle_in_transaction_seconds: float = Field(default=10.0, gt=0)
    # The stage processes' sessions end a transaction that lasts this long (PostgreSQL 17+'s transaction_timeout).
    # A process frozen inside a pipeline (statements sent, the Sync not yet) is "active" to PostgreSQL, not idle, so
    # the idle timeout never ends it: its row locks would hold the claimer of its entries until it woke. Not the
    # API's: an erasure of a large collection is one long transaction.
    db_stage_transaction_seconds: float = Field(default=10.0, gt=0)


class SearchIndexSettings(_Base):
    """pgvector HNSW parameters. m and ef_construction apply when a pack's index is built (its first
    embedding); ef_search on every search. BENCHMARKS.md (search at scale) shows recall and latency for each."""

    hnsw_m: int = Field(default=32, ge=2, le=100)
    hnsw_ef_construction: int = Field(default=128, ge=4, le=1000)
    hnsw_ef_search: int = Field(default=100, ge=1, le=1000, description="at least the candidates a search reads")
    # A search in one collection walks the graph on until it has its candidates of that collection (pgvector's
    # iterative scan), visiting at most this many index tuples: a 1 % collection needs ~100 x its candidates.
    hnsw_max_scan_tuples: int = Field(default=1_000_000, ge=1_000, le=100_000_000)
    # binary: an exact Hamming scan of every face's sign bits held in memory by each index process, then PostgreSQL
    # ranks the best codes by their full vectors; hnsw: pgvector's graph (BENCHMARKS.md, search at scale).
    search_index: Literal["binary", "hnsw"] = "binary"
    # Codes a binary scan hands PostgreSQL to rank by the full vectors (per face searched; at least 4x the limit).
    binary_candidates: int = Field(default=150, ge=10, le=5000)
    # Whether each pack's HNSW index is built and maintained: unset, only with search_index hnsw (the binary index
    # needs none; a million-face build takes 1.6 h on 2 cores and every insert pays for it); true keeps it for a
    # switch back to hnsw without a build (`fecapass models build-index` builds it later).
    hnsw_index: bool | None = None

    @property
    def builds_hnsw(self) -> bool:
        return self.search_index == "hnsw" if self.hnsw_index is None else self.hnsw_index

    @model_validator(mode="after")
    def _construction_covers_links(self) -> SearchIndexSettings:
        if self.hnsw_ef_construction < 2 * self.hnsw_m:
            raise ValueError("FECAPASS_HNSW_EF_CONSTRUCTION must be at least twice FECAPASS_HNSW_M (pgvector's rule)")
        return self


class ModelSettings(_Base):
    # The pack searches use until `fecapass models activate` picks another (the database then decides).
    # dlib installs with pip and may be used commercially; production sets buffalo_l (non-commercial terms).
    model_pack: str = "dlib"
    # insightface layout: <model_root>/models/<model_pack>/*.onnx
    model_root: Path = Path("~/.insightface").expanduser()
    det_size: int = Field(default=640, ge=160, le=1920)
    det_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    min_face_size: int = Field(default=20, ge=1, description="smaller faces (shorter box side, px) are ignored")
    # 0 lets onnxruntime pick; 1 is best when several stage processes share the cores.
    ort_threads: int = Field(default=0, ge=0)
    # OpenCV's threads in a stage process (decoding, resizing, warping). Unset: FECAPASS_ORT_THREADS, so that a
    # process meant for one core does its image work on one too (OpenCV's pool otherwise wakes a thread per core
    # for every call: ~8 % more CPU for a photo's decode and resize). 0: OpenCV's choice, a thread per core.
    opencv_threads: int | None = Field(default=None, ge=0)
    # Freed memory (MiB) a stage process keeps for its next photo instead of handing it back and faulting it in
    # again (glibc only, common/allocator.py: ~0.7 ms of kernel CPU a photo in the detect stage). 0: glibc's own.
    heap_retain_mb: int = Field(default=64, ge=0, le=4096)

    @property
    def image_threads(self) -> int:
        return self.ort_threads if self.opencv_threads is None else self.opencv_threads

    # onnxruntime execution providers, in order of preference, comma-separated: cpu, cuda, tensorrt, openvino,
    # coreml (or onnxruntime's own names). Each must be installed (onnxruntime-gpu for cuda/tensorrt); CPU is
    # always added last as the fallback for operators a provider does not run.
    ort_providers: str = "cpu"
    # onnxruntime graph optimisation: disable, basic, extended or all.
    ort_graph_optimization: str = Field(default="all", pattern="^(disable|basic|extended|all)$")
    # onnxruntime's CPU memory arena: faster steady state, memory that is never handed back to the system.
    ort_memory_arena: bool = True
    # Faces per recognizer forward pass in the embed stage. On CPU a batch is no faster per face (1 to 4 alike, 8 and
    # more slower: BENCHMARKS.md, embedding); on a GPU raise it (compose.gpu.yaml: 32).
    embed_batch: int = Field(default=1, ge=1)


class PipelineSettings(_Base):
    # Cosine similarity above which a stored face counts as the same person. Unset: the active pack's
    # calibrated threshold (CALIBRATION.md), which differs between packs: each uses the cosine scale differently.
    similarity_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    # Unset threshold: search picks it from the gallery's size N so that one search expects at most this many false
    # matches (per-comparison false-match rate <= this / N, from the pack's curve in CALIBRATION.md).
    false_matches_per_search: float = Field(default=0.1, gt=0.0, le=100.0)
    search_limit: int = Field(default=10, ge=1, le=100)
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    job_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    max_wait_seconds: float = Field(default=30.0, ge=0)
    presign_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600, description="lifetime of photo URLs")
    # Entries waiting in one stage (undelivered + pending) past which uploads get 429 instead of growing Redis.
    max_backlog: int = Field(default=10_000, ge=1)
    # Transient bytes (search, verify and detect photos; every crop but an enroll's) live in Redis this long at most:
    # a job's end deletes them sooner. Keep it above the longest wait of a healthy message, every stage's deliveries
    # times the claim idle (600 s with the defaults); a message whose bytes expired fails `photo_expired`.
    transient_ttl_seconds: int = Field(default=3600, ge=60)
    # Bytes of transient photos and crops Redis may hold before uploads get 429 backlog_full: size it under Valkey's
    # maxmemory with room for the streams and status hashes (DEPLOYMENT.md, Valkey memory).
    transient_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)


class StreamSettings(_Base):
    read_count: int = Field(default=16, ge=1, description="entries per XREADGROUP; the embed stage's batch")
    block_ms: int = Field(default=1000, ge=1)
    claim_idle_ms: int = Field(default=30_000, ge=1, description="pending this long -> claimed by another")
    max_deliveries: int = Field(default=5, ge=1, description="deliveries before an entry is dead-lettered")
    drain_seconds: float = Field(default=30.0, ge=0, description="grace to finish in-flight work on SIGTERM")
    # After a batch that failed for a passing reason (a store down), wait base * 2^n (with jitter, capped).
    retry_backoff_ms: int = Field(default=200, ge=1)
    retry_backoff_max_ms: int = Field(default=10_000, ge=1)
    # While a store is down, a batch is retried in place this long before it falls back to redelivery.
    outage_retry_seconds: float = Field(default=600.0, ge=0)
    # Acknowledged entries are trimmed from a stream once older than this; unacknowledged ones never are.
    stream_retention_seconds: int = Field(default=3600, ge=0)
    # Consumers idle this long with nothing pending (processes gone) are removed from their group.
    consumer_idle_ms: int = Field(default=3_600_000, ge=1000)
    housekeeping_seconds: float = Field(default=30.0, gt=0, description="how often trimming and cleanup run")


class ApiSettings(_Base):
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Base of every URL the API hands to clients (status_url, Location); never taken from the Host header.
    public_url: AnyHttpUrl | None = Field(default=None, description="default: http://<api_host>:<api_port>")
    # Comma-separated addresses (or CIDRs) of reverse proxies whose X-Forwarded-* headers are believed.
    trusted_proxies: str = ""
    # A request body that sends nothing for this long, or less than body_min_rate bytes/s on average after
    # this long, is cut off with 408 (slow clients would otherwise hold a connection and an upload slot).
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    body_min_rate: int = Field(default=4096, ge=0, description="bytes per second; 0 turns the rate check off")
    # Requests with a body one key may have in flight on one API process; past it, 429 with Retry-After.
    max_uploads_per_key: int = Field(default=32, ge=1)

    # An Idempotency-Key answers with the first job or user for this long.
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    # Upload checks (decoding) in flight per API process: at most this many at once and this many decoded
    # pixels; past either an upload waits up to decode_wait_seconds for room, then gets 503 busy.
    max_concurrent_decodes: int = Field(default=4, ge=1)
    max_decode_pixels_in_flight: int = Field(default=64_000_000, ge=1)
    decode_wait_seconds: float = Field(default=2.0, ge=0)
    # Originals older than this with neither a job hash nor a face row are deleted by the orphan sweep. A job's
    # hash is written in the same MULTI as its event, seconds at most after its photo is stored; the margin
    # covers slow S3 puts, Redis retries and clock skew between the S3 server and the API.
    orphan_after_seconds: int = Field(default=3600, ge=300)
    # How often one API process (a Redis lock picks it) sweeps the originals; 0 turns the sweep off.
    orphan_sweep_seconds: float = Field(default=3600.0, ge=0)
    # How often one API process (a Redis lock picks it) settles unknown faces: erases those past their collection's
    # retention and places again those waiting for a cluster; 0 turns it off (`fecapass clusters settle` by hand).
    clusters_settle_seconds: float = Field(default=600.0, ge=0)

    @property
    def base_url(self) -> str:
        if self.public_url is not None:
            return str(self.public_url).rstrip("/")
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"http://{host}:{self.api_port}"

    @property
    def proxies(self) -> list[str]:
        return [address.strip() for address in self.trusted_proxies.split(",") if address.strip()]


class EgressSettings(_Base):
    """Where webhooks may go (common/egress.py; read by the API at submit time and by the webhook sender).
    Comma-separated CIDRs and host names (a name covers its subdomains). By default only public addresses are
    reached; allow wins over that default refusal, deny wins over everything."""

    webhook_allow: str = ""
    webhook_deny: str = ""


class WebhookSettings(_Base):
    # Shared with webhook receivers, who check each request's HMAC-SHA256 signature with it.
    webhook_secret: SecretStr
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_attempts: int = Field(default=3, ge=1, le=10, description="quick tries before a delivery is redelivered")
    # Deliveries in flight at once to one receiver (host:port), and in all; a slow receiver holds only its own.
    webhook_per_receiver: int = Field(default=4, ge=1, le=100)
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    # How long a batch waits for its deliveries; one still going on after that finishes on its own, and the
    # batch moves on, so that a receiver that never answers does not hold the others' webhooks.
    webhook_batch_wait_seconds: float = Field(default=2.0, ge=0)


class ObservabilitySettings(_Base):
    # Each stage process serves Prometheus metrics here (the API serves them at /metrics on its own port).
    metrics_port: int = Field(default=9100, ge=0, le=65535, description="0 turns the worker metrics server off")
    # Address that server listens on: this machine only unless a deployment opens it to its scraper.
    metrics_host: str = "127.0.0.1"
    # What `fecapass healthcheck` (the container HEALTHCHECK) fetches.
    healthcheck_url: str = "http://127.0.0.1:8000/health/live"
    # Each stage loop touches this file on every turn; `fecapass healthcheck --heartbeat` fails once it is older
    # than the max age (a stuck loop), which the metrics thread, still answering, cannot show.
    heartbeat_file: Path = Path("/tmp/fecapass-heartbeat")
    heartbeat_max_age_seconds: float = Field(default=120.0, gt=0, description="longest batch a stage may take")


class LogSettings(_Base):
    log_level: str = "INFO"
    log_json: bool = True


ALL_SETTINGS: tuple[type[BaseSettings], ...] = (
    DatabaseSettings,
    SearchIndexSettings,
    RedisSettings,
    S3Settings,
    ModelSettings,
    PipelineSettings,
    StreamSettings,
    ApiSettings,
    EgressSettings,
    WebhookSettings,
    ObservabilitySettings,
    LogSettings,
)


class SettingsError(RuntimeError):
    """Raised with a readable message when required settings are missing or invalid."""


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S]) -> S:
    """Build a settings class, turning pydantic's error into one naming the variables."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = ENV_PREFIX + "_".join(str(part) for part in error["loc"]).upper()
            problems.append(f"{variable}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
