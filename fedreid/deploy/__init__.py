"""Real deployment: certificates, site keys and Flower's SuperLink / SuperNode processes.

An adapter package: it drives Flower's own command-line tools (``flower-superlink``,
``flower-supernode``, ``flwr``) as subprocesses, so the federation code runs unchanged
between simulation and deployment.
"""
