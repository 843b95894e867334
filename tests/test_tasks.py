"""Celery wiring: real workers on Redis and on the embedded (SQLAlchemy/SQLite) broker, and a broker that is down."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from queue import Empty

import pytest
from django.conf import settings
from django.utils.timezone import now

from budgets import services, tasks
from budgets.domain.usage import Usage
from budgets.models import Alert, BudgetPeriod, CostEvent, Project, UserBudget
from budgets.services import alerts
from budgetsite.celery import embedded_broker_prepare
from tests.celery_support import (
    WebhookReceiver,
    celery_app,
    closed_port,
    embedded_broker,
    redis_broker,
    running_worker,
)
from tests.redis_support import PrivateRedis, redis_url_or_skip


def spend(project: Project, user: str, dollars: str):
    return services.cost_record(project=project, user_id=user, usage=Usage("gpt-4o", 0, 0),
                                cost=Decimal(dollars), source="api")


def make_due(budget: UserBudget) -> None:
    """Move a budget's reset time into the past, as if its period had just ended."""
    UserBudget.objects.filter(pk=budget.pk).update(next_reset_at=now() - timedelta(seconds=1))


@pytest.fixture(params=["embedded", "redis"])
def broker(request, tmp_path: Path) -> dict:
    """Celery settings for each broker a worker test runs on."""
    if request.param == "redis":
        return redis_broker(redis_url_or_skip())
    return embedded_broker(tmp_path / "broker")


# --- configuration --------------------------------------------------------------------------


def test_the_app_is_configured_for_reliable_json_tasks():
    from budgetsite.celery import app

    conf = app.conf
    assert (conf.task_serializer, conf.result_serializer, conf.accept_content) == ("json", "json", ["json"])
    assert conf.task_acks_late and conf.task_time_limit > conf.task_soft_time_limit > 0
    assert (conf.timezone, conf.enable_utc) == ("UTC", True)
    assert conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    assert conf.broker_connection_max_retries is None  # a worker outlives a broker outage
    assert conf.task_publish_retry_policy["max_retries"] <= 2  # a web request does not wait long
    assert {"budgets.reset_sweep", "budgets.alert_outbox", "budgets.deliver_alert"} <= set(app.tasks)


def test_without_redis_the_broker_is_the_embedded_sqlalchemy_one():
    if os.environ.get("REDIS_URL") or os.environ.get("CELERY_BROKER_URL"):
        assert not settings.CELERY_BROKER_URL.startswith("sqla+")
        return
    assert settings.CELERY_BROKER_URL == f"sqla+sqlite:///{settings.VAR_DIR / 'broker.sqlite3'}"
    assert settings.BROKER_DB.is_relative_to(settings.VAR_DIR)
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS == {"connect_args": {"timeout": 30}}


# --- the embedded broker ----------------------------------------------------------------------


def queue_name() -> str:
    # kombu keeps exchange bindings per process: a fresh name per test keeps tests apart.
    return f"jobs-{uuid.uuid4().hex}"


def embedded_connection(folder: Path):
    from kombu import Connection

    broker = embedded_broker(folder)
    return Connection(broker["broker_url"], transport_options=broker["broker_transport_options"])


def broker_rows(folder: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(folder / "broker.sqlite3") as db:
        return db.execute("SELECT q.name, m.visible FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
                          " ORDER BY m.id").fetchall()


def test_the_embedded_broker_creates_its_tables_and_carries_messages_between_connections(tmp_path):
    folder, name = tmp_path / "broker", queue_name()
    with embedded_connection(folder) as producer, embedded_connection(folder) as consumer:
        producer.SimpleQueue(name).put({"n": 1})
        assert broker_rows(folder) == [(name, 1)]
        message = consumer.SimpleQueue(name).get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        assert broker_rows(folder) == [(name, 0)]  # kombu keeps delivered messages, hidden
        with pytest.raises(Empty):
            consumer.SimpleQueue(name).get(timeout=1.5)


def test_a_message_is_taken_by_one_consumer_only(tmp_path):
    folder, name = tmp_path / "broker", queue_name()
    with embedded_connection(folder) as producer, embedded_connection(folder) as first, \
            embedded_connection(folder) as second:
        producer.SimpleQueue(name).put({"n": 1})

        assert first.SimpleQueue(name).get(timeout=5).payload == {"n": 1}
        with pytest.raises(Empty):
            second.SimpleQueue(name).get(timeout=1.5)


_BROKER_PROCESS = """
import json, sys
from queue import Empty
from kombu import Connection
url, queue, role, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with Connection(url, transport_options={"connect_args": {"timeout": 30}}) as connection:
    jobs = connection.SimpleQueue(queue)
    if role == "put":
        for i in range(n):
            jobs.put({"n": f"{n}-{i}"})
    else:
        got = []
        empty_in_a_row = 0
        while empty_in_a_row < 3:  # the producers may still be writing
            try:
                message = jobs.get(timeout=1)
            except Empty:
                empty_in_a_row += 1
                continue
            empty_in_a_row = 0
            got.append(message.payload["n"])
            message.ack()
        print(json.dumps(got))
"""


@pytest.mark.slow
def test_several_processes_publish_and_consume_each_message_exactly_once(tmp_path):
    folder, name = tmp_path / "broker", queue_name()
    url = embedded_broker(folder)["broker_url"]
    # As run_embedded does before its children start: kombu creates tables and queue rows on first
    # use without a cross-process lock, and processes racing to create one fail (IntegrityError).
    embedded_broker_prepare(celery_app_for(url, queue=name))
    run = [sys.executable, "-c", _BROKER_PROCESS, url, name]
    producers = [subprocess.Popen([*run, "put", str(n)]) for n in (60, 61)]
    consumers = [subprocess.Popen([*run, "get", "0"], stdout=subprocess.PIPE, text=True) for _ in range(3)]

    outputs = [consumer.communicate(timeout=120)[0] for consumer in consumers]
    assert [producer.wait(timeout=120) for producer in producers] == [0, 0]
    assert [consumer.returncode for consumer in consumers] == [0, 0, 0]

    taken = [n for output in outputs for n in json.loads(output)]
    expected = [f"60-{i}" for i in range(60)] + [f"61-{i}" for i in range(61)]
    assert sorted(taken) == sorted(expected)  # every message once: none lost, none twice


def celery_app_for(url: str, queue: str = "celery"):
    from celery import Celery

    app = Celery("broker-test", set_as_current=False)
    app.conf.update(broker_url=url, broker_transport_options={"connect_args": {"timeout": 30}},
                    task_default_queue=queue)
    return app


def test_preparing_the_embedded_broker_creates_its_tables_and_drops_only_delivered_messages(tmp_path):
    folder, name = tmp_path / "broker", queue_name()
    app = celery_app_for(embedded_broker(folder)["broker_url"])

    assert embedded_broker_prepare(app) == 0
    with sqlite3.connect(folder / "broker.sqlite3") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"kombu_queue", "kombu_message"} <= tables
        assert db.execute("SELECT name FROM kombu_queue").fetchall() == [("celery",)]

    with embedded_connection(folder) as connection:
        jobs = connection.SimpleQueue(name)
        jobs.put({"n": 1})
        jobs.put({"n": 2})
        jobs.get(timeout=5).ack()

    assert embedded_broker_prepare(app) == 1
    assert broker_rows(folder) == [(name, 1)]
    with embedded_connection(folder) as connection:
        assert connection.SimpleQueue(name).get(timeout=5).payload == {"n": 2}


# --- real workers ---------------------------------------------------------------------------


@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_resets_a_due_budget_with_the_sweep_task(broker, project, make_budget):
    budget = make_budget("alice", duration="daily")
    spend(project, "alice", "1.5")
    make_due(budget)

    with celery_app(**broker) as app, running_worker(app) as worker:
        tasks.reset_sweep.delay()
        (result,) = worker.wait_for("budgets.reset_sweep")

    assert result == {"budgets": 1, "projects": 0, "reservations": 0, "deleted_rows": 0, "limits": 0,
                      "grants": 0}
    budget.refresh_from_db()
    assert budget.current_spend == 0
    assert budget.next_reset_at > now()
    assert BudgetPeriod.objects.get().spend == Decimal("1.5")


@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_delivers_an_alert_queued_when_the_cost_was_recorded(broker, project, make_budget):
    make_budget("alice", total_budget="10")
    with WebhookReceiver() as receiver, celery_app(**broker) as app, running_worker(app) as worker:
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=receiver.url)
        project.refresh_from_db()
        spend(project, "alice", "8.5")  # commits, then queues the delivery
        worker.wait_for("budgets.deliver_alert")

    assert len(receiver.received) == 1
    assert receiver.received[0].json()["threshold"] == 80
    alert = Alert.objects.get()
    assert (alert.attempts, alert.last_error) == (1, "")
    assert alert.delivered_at is not None


@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_retries_a_failing_webhook_with_backoff(broker, project, make_budget, monkeypatch):
    monkeypatch.setattr(alerts, "RETRY_BASE_SECONDS", 0.2)  # 0.2 s, 0.4 s: a real countdown, kept short
    make_budget("alice", total_budget="10")
    with WebhookReceiver([500, 502]) as receiver, celery_app(**broker) as app, running_worker(app) as worker:
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=receiver.url)
        project.refresh_from_db()
        spend(project, "alice", "9")
        worker.wait_for("budgets.deliver_alert", state="SUCCESS")

    assert [state for name, state, _ in worker.done if name == "budgets.deliver_alert"] == [
        "RETRY", "RETRY", "SUCCESS"]
    assert len(receiver.received) == 3
    alert = Alert.objects.get()
    assert (alert.attempts, alert.last_error) == (3, "")
    assert alert.delivered_at is not None


# --- the broker is down ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_recording_cost_succeeds_with_the_broker_down_and_the_alert_goes_out_once_it_is_back(
    project, make_budget, tmp_path, caplog
):
    make_budget("alice", total_budget="10")
    with WebhookReceiver() as receiver:
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=receiver.url)
        project.refresh_from_db()
        with celery_app(**redis_broker(f"redis://127.0.0.1:{closed_port()}/0")):
            recorded = spend(project, "alice", "9")
            assert alerts.publisher.wait_until_idle(30)  # the publish runs on the publisher thread

        assert recorded.created
        assert CostEvent.objects.get().cost == Decimal(9)
        assert UserBudget.objects.get().current_spend == Decimal(9)
        alert = Alert.objects.get()
        assert (alert.delivered_at, alert.attempts) == (None, 0)
        assert "could not queue the delivery of alert" in caplog.text

        # The broker is back: beat's outbox sweep queues the alert again and a worker delivers it.
        Alert.objects.filter(pk=alert.pk).update(created_at=now() - timedelta(minutes=2))
        with celery_app(**embedded_broker(tmp_path / "broker")) as app, running_worker(app) as worker:
            tasks.alert_outbox.delay()
            assert worker.wait_for("budgets.alert_outbox") == [1]
            worker.wait_for("budgets.deliver_alert")

    assert len(receiver.received) == 1
    alert.refresh_from_db()
    assert alert.delivered_at is not None


@pytest.mark.slow
@pytest.mark.django_db
def test_queueing_on_a_broker_that_never_answers_gives_up_instead_of_hanging(caplog):
    # A port that accepts connections (the kernel's backlog) but never answers a command.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        outcome: list[bool] = []
        with celery_app(**redis_broker(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")):
            thread = threading.Thread(target=lambda: outcome.append(alerts.queue_delivery(12345, wait=True)),
                                      daemon=True)
            thread.start()
            thread.join(60)  # a generous bound: this asserts it returns at all, not how fast

    assert outcome == [False]
    assert "could not queue the delivery of alert 12345" in caplog.text


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_api_records_cost_with_the_broker_down(project, make_budget, client):
    make_budget("alice", total_budget="10")
    Project.objects.filter(pk=project.pk).update(alert_webhook_url="http://127.0.0.1:9/hook")
    _, key = services.api_key_create(project=project, name="test")

    with celery_app(**redis_broker(f"redis://127.0.0.1:{closed_port()}/0")):
        response = client.post("/api/v1/users/alice/costs", {"model": "gpt-4o", "cost": 9},
                               content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert alerts.publisher.wait_until_idle(30)

    assert response.status_code == 201
    assert UserBudget.objects.get().current_spend == Decimal(9)
    assert Alert.objects.filter(delivered_at__isnull=True).count() == 1


@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server program")
def test_an_alert_recorded_while_redis_was_down_goes_out_through_the_same_redis_once_it_is_back(
    project, make_budget, tmp_path, caplog
):
    redis = PrivateRedis(tmp_path)
    make_budget("alice", total_budget="10")
    try:
        with WebhookReceiver() as receiver:
            Project.objects.filter(pk=project.pk).update(alert_webhook_url=receiver.url)
            project.refresh_from_db()
            with celery_app(**redis_broker(redis.url)) as app:
                redis.start()
                redis.stop()  # it was up, and now it is down
                recorded = spend(project, "alice", "9")
                assert alerts.publisher.wait_until_idle(30)

                assert recorded.created
                assert UserBudget.objects.get().current_spend == Decimal(9)
                alert = Alert.objects.get()
                assert alert.delivered_at is None
                assert "could not queue the delivery of alert" in caplog.text

                redis.start()  # back, same address: beat's outbox sweep queues it again
                Alert.objects.filter(pk=alert.pk).update(created_at=now() - timedelta(minutes=2))
                with running_worker(app) as worker:
                    tasks.alert_outbox.delay()
                    assert worker.wait_for("budgets.alert_outbox") == [1]
                    worker.wait_for("budgets.deliver_alert")
    finally:
        redis.stop()

    assert len(receiver.received) == 1
    alert.refresh_from_db()
    assert alert.delivered_at is not None
    assert CostEvent.objects.count() == 1
