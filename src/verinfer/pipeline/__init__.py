"""verinfer.pipeline: split inference across nodes — the partition planner and node profiles.

The planner (`verinfer.pipeline.planner`) is pure: measured figures in (`cluster`), a plan out.
Stage execution builds on the node server.
"""
