"""Run a job on Ray Data: one rate limit, one budget and one ledger for every worker.

    from pipeline.ray import RayOptions, run_job
    report = run_job("jobs/example.toml", Credentials(key), options=RayOptions(workers=4))

Needs the ``ray`` extra (``pip install 'momo-batch[ray]'``); nothing here imports Ray until a
job runs. See the README, "More than one machine".
"""

from .run import RayOptions, run_job

__all__ = ["RayOptions", "run_job"]
