"""The project package: settings, ASGI/WSGI entry points, root URLs, health, and core.compat."""
