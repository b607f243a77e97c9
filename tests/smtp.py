"""A real SMTP server on loopback for the tests (aiosmtpd), keeping what it receives."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from core.redis_local import free_port


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())


class CollectingHandler:
    """aiosmtpd's handler hook: every message accepted is kept, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[ReceivedMail] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self._received.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    @property
    def received(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._received)


class SmtpServer:
    """aiosmtpd's Controller on 127.0.0.1 and a free port, in a thread of its own."""

    def __init__(self) -> None:
        self.handler = CollectingHandler()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.controller = Controller(self.handler, hostname=self.host, port=self.port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[ReceivedMail]:
        return self.handler.received
