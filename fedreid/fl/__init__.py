"""Flower-free federated maths: arrays in, arrays out (never imports flwr).

- ``weights``: per-site aggregation weights (KLAW, PRAW, KLPWA, sample counts, CDW)
- ``sas``: mask-aware weighted averaging of pruned site models (SAS), the reference
- ``flat_sas``: the coordinator's SAS on flat buffers, folding each reply as it arrives
  (``weight_rules``: weights as linear forms so KLPWA streams; ``mask_store``: every
  site's mask and cached kept positions; ``scatter``: the scatter/gather loops)
- ``validate``: everything checked of a reply before it counts
- ``dp`` and ``privacy_ledger``: clipping, server noise and ``dp_accounting``'s ε
- ``crr``: cross-round recovery state machine gating each site's pruning
- ``codec``: sparse wire encoding (fp32/fp16/bf16 values, bitmaps or digests of held
  masks, the seeded start) and its structural checks
- ``accounting``: the serialised byte count of what Flower sends
- ``admission``: whether a site may take part in a run (its name and shared arrays)
"""
