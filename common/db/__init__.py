"""The data layer: one repository per database, plain SQL migrations, erasure."""
