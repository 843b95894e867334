"""python manage.py run_embedded: the whole service on one machine, from one command (`make run`).

Refuses a port that is in use with one line before doing anything else.  Migrates
(prices load in 0002, the beat schedule in 0003), creates the demo superuser `admin`
once (its random password is kept in VAR_DIR/admin_password and printed at each start
while it is still the password), seeds demo data into an empty database when a
`seed_demo` command exists, collects static files, then runs gunicorn, a Celery worker
and Celery beat under honcho's process manager, which prefixes their output with their
names.  The URL and login are printed once the web server answers on its port.
Ctrl-C (SIGINT) or SIGTERM stops all three and exits 0; if one child dies, the
others are stopped and the command exits 1.  If run_embedded itself is SIGKILLed,
honcho cannot stop its children: they keep running (docs/operations.md).
"""

from __future__ import annotations

import errno
import http.client
import os
import secrets
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import honcho.manager
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import check_password
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from budgets import services
from budgets.models import Project
from budgets.services.schedule import beat_schedule_install
from budgetsite.celery import embedded_broker_prepare

ADMIN_USERNAME = "admin"
STOP_TIMEOUT = 20  # seconds a child gets to finish its work after SIGTERM, then SIGKILL
READY_TIMEOUT = 60  # seconds the web server gets to answer on its port before we say it did not
# The exit codes honcho gives its loop when it stopped on SIGINT or SIGTERM (130, 143).
STOPPED_BY_SIGNAL = frozenset(sig["rc"] for sig in honcho.manager.SIGNALS.values())


class Command(BaseCommand):
    help = "Run the web server, a Celery worker and Celery beat together (embedded mode, `make run`)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"),
                            help="Address to serve on (default $HOST or 127.0.0.1).")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000),
                            help="Port to serve on (default $PORT or 8000).")
        parser.add_argument("--threads", type=int, default=4, help="Web server threads (default 4).")
        parser.add_argument("--no-seed", action="store_true", help="Do not load demo data into an empty database.")

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        port_check(host, port)  # before anything starts or prints
        login = self.prepare(seed=not options["no_seed"])
        # The children open their own connections; this process only supervises.
        connections.close_all()
        manager = self.manager(host=host, port=port, threads=options["threads"])
        stopped = threading.Event()
        announcer = threading.Thread(target=self.announce, args=(host, port, login, stopped), daemon=True)
        announcer.start()
        # honcho's only knob for the grace period is this module constant (default 5 s): the
        # worker gets as long as before to finish a task.
        honcho.manager.KILL_WAIT = STOP_TIMEOUT
        try:
            manager.loop()  # returns once every child has stopped
        finally:
            stopped.set()
            announcer.join(5)
        if manager.returncode not in STOPPED_BY_SIGNAL:
            raise CommandError(f"a process stopped unexpectedly (exit code {manager.returncode}); "
                               "the others were stopped")
        self.say("Stopped.")

    # --- before the children start ---------------------------------------------------------

    def prepare(self, *, seed: bool) -> str:
        """Everything a fresh VAR_DIR needs; returns the login line to print."""
        var_dir = Path(settings.VAR_DIR)
        var_dir.mkdir(parents=True, exist_ok=True)
        if settings.CELERY_BROKER_URL.startswith("sqla+"):
            embedded_broker_prepare()
        self.say("Migrating the database…")
        call_command("migrate", interactive=False, verbosity=0)
        beat_schedule_install()
        login = self.ensure_admin(var_dir / "admin_password")
        if seed and "seed_demo" in get_commands() and not Project.objects.exists():
            self.say("Loading demo data…")
            call_command("seed_demo")
        call_command("collectstatic", interactive=False, verbosity=0)
        return login

    def ensure_admin(self, password_file: Path) -> str:
        """Create the demo superuser if there is no superuser; its password is generated once."""
        users = get_user_model()
        if not users.objects.filter(is_superuser=True).exists() and not password_file.exists():
            password_file.write_text(secrets.token_urlsafe(12) + "\n")
            password_file.chmod(0o600)
        if password_file.exists() and services.superuser_ensure(
            username=ADMIN_USERNAME, password=password_file.read_text().strip()
        ):
            self.say(f"Created the superuser {ADMIN_USERNAME!r}.")
        admin = users.objects.filter(username=ADMIN_USERNAME).first()
        if password_file.exists() and admin is not None:
            password = password_file.read_text().strip()
            # The file keeps the password it was generated with; once changed in the admin it is
            # stale, and printing it would send the reader to a login that fails.
            if check_password(password, admin.password):
                return (f"Log in as {ADMIN_USERNAME} with password {password} "
                        f"(kept in {password_file}; change it in the admin).")
            return (f"Log in as {ADMIN_USERNAME} (password changed since {password_file} was written; "
                    f"reset it with `python manage.py changepassword {ADMIN_USERNAME}`).")
        return "Log in with your superuser account."

    def announce(self, host: str, port: int, login: str, stopped: threading.Event) -> None:
        """Print the URL and login once the web server answers on its port (a thread beside honcho's loop)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not stopped.is_set():
            if web_answers(host, port):
                self.say(f"Budget Manager is running at http://{url_host(host)}:{port}/")
                self.say(login)
                self.say("Press Ctrl-C to stop.")
                return
            if time.monotonic() > deadline:
                self.say(f"The web server does not answer on {url_host(host)}:{port} after {READY_TIMEOUT} s; "
                         "see the web lines above.")
                return
            stopped.wait(0.2)

    # --- the children ----------------------------------------------------------------------

    def commands(self, *, host: str, port: int, threads: int) -> dict[str, list[str]]:
        python = sys.executable
        # honcho starts and stops them in this order: beat first (no new work), the worker last.
        return {
            "beat": [python, "-m", "celery", "-A", "budgetsite", "beat", "--loglevel", "INFO",
                     "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"],
            "web": [python, "-m", "gunicorn", "budgetsite.wsgi:application", "--bind", f"{host}:{port}",
                    "--workers", "1", "--worker-class", "gthread", "--threads", str(threads),
                    "--graceful-timeout", "10"],
            # One worker process with threads is plenty for one machine's sweeps and alerts.
            "worker": [python, "-m", "celery", "-A", "budgetsite", "worker", "--loglevel", "INFO",
                       "--pool", "threads", "--concurrency", "2", "--hostname", "embedded@%h",
                       "--without-gossip", "--without-mingle", "--without-heartbeat"],
        }

    def manager(self, *, host: str, port: int, threads: int) -> honcho.manager.Manager:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("DJANGO_SETTINGS_MODULE", "budgetsite.settings")
        manager = honcho.manager.Manager()
        for name, argv in self.commands(host=host, port=port, threads=threads).items():
            # honcho runs a shell command line; exec makes the pid it reports the child's own.
            manager.add_process(name, f"exec {shlex.join(argv)}", env=env, cwd=str(settings.BASE_DIR))
        return manager

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()


def port_check(host: str, port: int) -> None:
    """Refuse a port another process listens on, in one line, before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As gunicorn binds: a port left in TIME_WAIT by a previous run is free, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(f"port {port} on {host} is in use; "
                                   f"set PORT (PORT={port + 1} make run) or pass --port to use another") from None
            raise CommandError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def web_answers(host: str, port: int) -> bool:
    """Whether the web server accepts a connection and answers a request (any HTTP status) on its port."""
    # A wildcard address is reached through the loopback of its family.
    target = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    conn = http.client.HTTPConnection(target, port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    return True
