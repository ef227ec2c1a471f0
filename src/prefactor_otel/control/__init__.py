"""Control: what Prefactor tells a run to do (terminations.py: the public termination API and its registry)
and the poller that asks it (poll.py).
"""
