"""The Dagster layer: resources, configs, assets and checks. Bodies stay thin; work lives in lib/."""
