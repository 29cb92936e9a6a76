"""raysight's benchmarks: online and offline throughput against the model's own ceiling
and against a hand-written Flask server, on realistic random-weight models.

    python -m bench                 # every scenario (< 15 min on 2 CPU cores)
    python -m bench --quick         # tiny models, short windows: a smoke test
    python -m bench --only online_embeddings

Results go to ``bench/results/``: ``latest.json`` (every figure and its repeats) and PNG
plots. Each scenario runs its baselines side by side in the same run, interleaved, so load
from anything else on the machine hits all of them alike.
"""
