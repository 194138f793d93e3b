"""Running a job: the run directory, shard processing, and the executors."""
