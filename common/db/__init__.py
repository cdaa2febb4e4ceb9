"""The data layer: one repository per database, plain SQL migrations, erasure."""

# PostgreSQL's transaction_timeout exists from version 17 on (DatabaseSettings.db_stage_transaction_seconds).
TRANSACTION_TIMEOUT_SINCE = 170000
