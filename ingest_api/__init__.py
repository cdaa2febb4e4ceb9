"""The HTTP ingestion API: uploads become stream events; results are read from job status hashes."""
