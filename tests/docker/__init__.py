"""Tests that need a Docker engine; they run apart, with the pytest-celery plugin on."""
