"""Operations: the CLI, local mode, embedded servers, benchmarks, calibration, dead letters, re-indexing."""
