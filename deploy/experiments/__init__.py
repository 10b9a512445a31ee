"""`make reproduce`: seeds of the paper's evaluation protocol as child runs (child_runs.py, harness.py), reusing
committed seeds (committed_seeds.py), then the returns figure (returns_plot.py) and the results table beside the
published figures (results_table.py, published.py), each naming its machine and commit (provenance.py).

May import common/ and deploy/run/ (a child run is an ordinary `python -m deploy.train`); not tools/ or cluster/.
"""
