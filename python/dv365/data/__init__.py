"""UniTi data: Parquet storage, loader, synthetic generator, ingestion (issue 5)."""
