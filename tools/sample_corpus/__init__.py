"""The generator of the embedded sample corpus (`gcrp_assets/sample_corpus/inbox/`): `python -m
tools.sample_corpus.generate` from the repository root rewrites it byte-identically."""
