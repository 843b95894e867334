"""python manage.py run_embedded: the whole service on one machine, from one command (`make run`).

Migrates (prices load in 0002, the beat schedule in 0003), creates the demo superuser
`admin` once (its random password is kept in VAR_DIR/admin_password and printed at
each start), seeds demo data into an empty database when a `seed_demo` command
exists, collects static files, then runs gunicorn, a Celery worker and Celery beat
under honcho's process manager, which prefixes their output with their names.
Ctrl-C (SIGINT) or SIGTERM stops all three and exits 0; if one child dies, the
others are stopped and the command exits 1.  If run_embedded itself is SIGKILLed,
honcho cannot stop its children: they keep running (docs/operations.md).
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any

import honcho.manager
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from budgets import services
from budgets.models import Project
from budgets.services.schedule import beat_schedule_install
from budgetsite.celery import embedded_broker_prepare

ADMIN_USERNAME = "admin"
STOP_TIMEOUT = 20  # seconds a child gets to finish its work after SIGTERM, then SIGKILL
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
        login = self.prepare(seed=not options["no_seed"])
        # The children open their own connections; this process only supervises.
        connections.close_all()
        manager = self.manager(host=options["host"], port=options["port"], threads=options["threads"])
        self.say(f"Budget Manager is running at http://{options['host']}:{options['port']}/")
        self.say(login)
        self.say("Press Ctrl-C to stop.")
        # honcho's only knob for the grace period is this module constant (default 5 s): the
        # worker gets as long as before to finish a task.
        honcho.manager.KILL_WAIT = STOP_TIMEOUT
        manager.loop()  # returns once every child has stopped
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
        if password_file.exists() and users.objects.filter(username=ADMIN_USERNAME).exists():
            return (f"Log in as {ADMIN_USERNAME} with password {password_file.read_text().strip()} "
                    f"(kept in {password_file}; change it in the admin).")
        return "Log in with your superuser account."

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
