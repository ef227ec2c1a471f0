"""Prefactor's own vocabulary, below everything else: PFIDs and the ids derived from OTel ids (ids.py), and
the models of its HTTP API (http.py). Pure: no I/O, no state.
"""
