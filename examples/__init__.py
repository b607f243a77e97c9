"""Apps that show how to extend jobstream without editing it (README, docs/job-kinds.md)."""
