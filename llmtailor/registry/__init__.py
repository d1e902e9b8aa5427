"""The registry: datasets, runs, adapters, indexes, evaluations, deployments and API keys, with lineage."""
