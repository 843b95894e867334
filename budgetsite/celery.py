"""The Celery app: configured from Django settings (CELERY_* names).

Also the embedded broker (no REDIS_URL): kombu's filesystem transport, made safe
between the separate web, worker and beat processes that share it. Its folders are
created when a process first connects, a message appears in the queue folder only
once it is completely written, and a consumer takes it with an atomic rename, so a
half-written file is never read and two consumers never both get one message.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budgetsite.settings")

app = Celery("budgetsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def broker_folders(options: dict[str, Any]) -> list[Path]:
    """The folders the filesystem broker uses, from its transport options."""
    keys = ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")
    return [Path(options[key]) for key in keys if options.get(key)]


def ensure_broker_folders(options: dict[str, Any]) -> None:
    for folder in broker_folders(options):
        folder.mkdir(parents=True, exist_ok=True)


class FilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel with atomic writes and takes (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ensure_broker_folders(self.transport_options)

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        # Wall-clock nanoseconds keep the file order right across processes.
        name = f"{time.time_ns()}_{uuid.uuid4()}.{queue}.msg"
        # The temporary name has no ".<queue>.msg" part, so no consumer matches it.
        partial = os.path.join(self.data_folder_out, f"tmp-{uuid.uuid4().hex}")
        try:
            with open(partial, "wb") as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"Cannot add a message to {self.data_folder_out!r}") from exc

    def _get(self, queue: str) -> Any:
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            taken = os.path.join(self.processed_folder, name)
            try:
                # rename() within one file system is atomic: exactly one consumer wins.
                os.rename(os.path.join(self.data_folder_in, name), taken)
            except OSError:
                continue  # another consumer took it
            try:
                with open(taken, "rb") as file:
                    payload = file.read()
                if not self.store_processed:
                    os.remove(taken)
            except OSError as exc:
                raise ChannelError(f"Cannot read message {taken!r}") from exc
            return loads(bytes_to_str(payload))
        raise Empty()


class FilesystemTransport(filesystem.Transport):
    """The embedded broker's transport (settings.CELERY_BROKER_TRANSPORT selects it)."""

    Channel = FilesystemChannel
