"""Transport: the one part that does HTTP (client.py), what an answer means (answers.py, outcomes.py), the
wire encoding (wire.py), the per-request deadline (netdeadline.py), and the API access checks (api_check.py).
"""
