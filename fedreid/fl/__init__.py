"""Flower-free federated maths: arrays in, arrays out (never imports flwr).

- ``weights``: per-site aggregation weights (KLAW, PRAW, KLPWA, sample counts, CDW)
- ``sas``: mask-aware weighted averaging of pruned site models (SAS)
- ``crr``: cross-round recovery state machine gating each site's pruning
- ``codec``: sparse wire encoding of pruned states and validation of replies
- ``accounting``: the serialised byte count of what Flower sends
- ``admission``: whether a site may take part in a run (its name and shared arrays)
"""
