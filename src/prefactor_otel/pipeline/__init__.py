"""The pipeline: what to send and in which order. Span records and starts in, bulk items out: ids and
items (items.py), the state of open runs (runs.py), the planner, delivery through the transport, the
backlog on disk (backlog.py) and the account partition (partition.py); `Pipeline` (pipeline.py) holds one
process's parts. It knows nothing of the OTel SDK's exporter: anything that yields span records can feed it.
"""
