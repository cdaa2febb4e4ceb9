from __future__ import annotations

import pytest

from common import settings as s


def test_missing_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FECAPASS_S3_ACCESS_KEY", raising=False)
    monkeypatch.delenv("FECAPASS_S3_SECRET_KEY", raising=False)
    with pytest.raises(s.SettingsError) as error:
        s.load(s.S3Settings)
    assert "FECAPASS_S3_ACCESS_KEY" in str(error.value)
    assert "FECAPASS_S3_SECRET_KEY" in str(error.value)


def test_database_dsns_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FECAPASS_MAIN_DB_DSN", raising=False)
    monkeypatch.setenv("FECAPASS_VECTOR_DB_DSN", "postgresql://x@y/z")
    with pytest.raises(s.SettingsError, match="FECAPASS_MAIN_DB_DSN"):
        s.load(s.DatabaseSettings)


def test_non_secret_settings_have_working_defaults() -> None:
    pipeline = s.load(s.PipelineSettings)
    assert pipeline.similarity_threshold is None  # each pack's calibrated threshold
    assert s.load(s.ModelSettings).model_pack == "dlib"  # installed with the package, no download
    assert pipeline.max_upload_bytes >= 1024 * 1024
    assert s.load(s.StreamSettings).max_deliveries >= 1
    assert s.load(s.RedisSettings).redis_url.startswith("redis://")


def test_environment_overrides_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FECAPASS_MAX_DELIVERIES", "3")
    assert s.load(s.StreamSettings).max_deliveries == 3
    monkeypatch.setenv("FECAPASS_MAX_DELIVERIES", "0")
    with pytest.raises(s.SettingsError, match="FECAPASS_MAX_DELIVERIES"):
        s.load(s.StreamSettings)


def test_secrets_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FECAPASS_S3_ACCESS_KEY", "access")
    monkeypatch.setenv("FECAPASS_S3_SECRET_KEY", "very-secret-value")
    assert "very-secret-value" not in repr(s.load(s.S3Settings))


def test_hnsw_construction_list_must_cover_the_links(monkeypatch: pytest.MonkeyPatch) -> None:
    assert s.load(s.SearchIndexSettings).hnsw_ef_construction >= 2 * s.load(s.SearchIndexSettings).hnsw_m
    monkeypatch.setenv("FECAPASS_HNSW_M", "48")
    monkeypatch.setenv("FECAPASS_HNSW_EF_CONSTRUCTION", "64")
    with pytest.raises(s.SettingsError, match="FECAPASS_HNSW_EF_CONSTRUCTION"):
        s.load(s.SearchIndexSettings)


def test_opencv_threads_follow_onnxruntime_threads_unless_set() -> None:
    assert s.ModelSettings().image_threads == 0  # OpenCV's own default, as onnxruntime's
    assert s.ModelSettings(ort_threads=1).image_threads == 1  # one core's process: its image work on one thread too
    assert s.ModelSettings(ort_threads=1, opencv_threads=0).image_threads == 0
    assert s.ModelSettings(ort_threads=0, opencv_threads=2).image_threads == 2


def test_a_stage_process_sets_opencv_threads_once_and_zero_keeps_the_default() -> None:
    import cv2

    from common.imaging import use_image_threads

    before = cv2.getNumThreads()
    try:
        use_image_threads(1)
        assert cv2.getNumThreads() == 1
        use_image_threads(0)  # not OpenCV's 0 (no pool): left as it was
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
