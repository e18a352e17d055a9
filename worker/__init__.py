"""The analysis engine (`worker.engine`) and the RQ tasks that run it (`worker.tasks`)."""
