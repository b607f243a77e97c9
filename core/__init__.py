# Load the Celery app with Django, so @shared_task uses it in every process
# (web included: it dispatches jobs).
from celery_app import app as celery_app

__all__ = ["celery_app"]
