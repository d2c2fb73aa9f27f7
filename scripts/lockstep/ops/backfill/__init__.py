"""Backfill: provision or catch up one version's index from the corpus (`lockstep backfill`, apply).

engine.py        the one entry (`sync_index`, `preflight`): picks the stack's engine
core.py          the skeleton every engine shares: ensure index → guard → delta → load → finish
local.py         the `local` engine: embed in this process
ray_pipeline.py  the `ray` engine: a Ray Data pipeline on a local runtime or inside a Ray job
ray_jobs.py      the Jobs API client: submit, follow, detach (Ctrl-C), re-attach; the job's entrypoint
"""
