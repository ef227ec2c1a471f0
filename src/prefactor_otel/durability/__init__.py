"""Durability: what waits on disk -- the spool of undelivered bulk items (spool*.py) and the journal of
open runs (journal*.py). Storage only: what goes there and when is the pipeline's (pipeline/backlog.py).
"""
