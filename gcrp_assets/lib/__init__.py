"""Plain, Dagster-free building blocks: parsing, cleaning, formatting, tokenizing, metrics."""
