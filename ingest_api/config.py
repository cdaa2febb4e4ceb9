"""The settings the API process needs, built once in main() or by tests and passed to create_app."""

from __future__ import annotations

from dataclasses import dataclass

from common import settings as s


@dataclass(frozen=True)
class ApiConfig:
    redis: s.RedisSettings
    s3: s.S3Settings
    database: s.DatabaseSettings
    model: s.ModelSettings
    pipeline: s.PipelineSettings
    api: s.ApiSettings

    @classmethod
    def from_env(cls) -> ApiConfig:
        return cls(
            redis=s.load(s.RedisSettings),
            s3=s.load(s.S3Settings),
            database=s.load(s.DatabaseSettings),
            model=s.load(s.ModelSettings),
            pipeline=s.load(s.PipelineSettings),
            api=s.load(s.ApiSettings),
        )
