"""Everything the Ray side writes to MLflow, one module per concept (the names the analysis reads
as well live in explorer/tracking.py):

- `store`: the tracking store (checked within seconds, created under a lock) and its experiments;
- `owners`: which process owns a RUNNING run (owner tags, heartbeats), and closing the runs of dead owners;
- `parent`: a search's parent run, the search's identity: found by experiment and role, it records the
  search's params, spec and storage; `kdx search --resume` and `kdx confirm` attach to it;
- `trial_runs`: one run per trial (per fused member), a child of the parent (a Tune callback);
- `teacher_runs`: one run per teacher the zoo builds.
"""
