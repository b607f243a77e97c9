from __future__ import annotations

from django.apps import AppConfig


class GreetingsConfig(AppConfig):
    name = "examples.greetings"
    label = "greetings"
