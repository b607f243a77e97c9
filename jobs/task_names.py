"""The names of jobstream's Celery tasks, declared once.

The tasks register under them (jobs/tasks.py), the services send by them (so they never
import the tasks), and the beat schedule (core/settings.py) and the log context
(core/log.py) refer to them. Operators see them in `celery inspect` and Flower, and a
message in the broker carries one: rename a task only with every worker at once.
"""

from __future__ import annotations

RUN_JOB_TASK = "jobs.run_job"  # runs one job; its task id is the job's id
NOTIFY_ENDED_TASK = "jobs.notify_ended"  # the email of a job's end, once (jobs/services/notify.py)
SWEEP_TASK = "jobs.sweep"  # lost workers, jobs never sent, messages the broker lost
PURGE_FINISHED_TASK = "jobs.purge_finished"  # retention
CLEAR_SESSIONS_TASK = "jobs.clear_sessions"  # expired sessions, as `manage.py clearsessions`
