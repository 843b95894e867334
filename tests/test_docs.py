"""The documentation's command blocks work when pasted: each is run, in order, against a live server.

Every fenced ```sh / ```bash / ```console / ```python block of README.md and docs/*.md runs,
unless the line just before it is `<!-- docs-test: skip (why) -->` (make run, apt-get,
pip install, production processes, calls to a model): those are listed below, reason included.
One gunicorn on a free port serves every document, on its own SQLite database in a temporary
VAR_DIR; the `manage.py` commands of the blocks run against the same database.  Each document
starts from a fresh project `acme` with its own API key, exported as the blocks expect:
`BM` (the server's address) and `KEY` (the key); Python blocks name the address
`http://127.0.0.1:8000` and the key `bm_...`, which the test replaces.

The status convention: every `curl` in a block states its status as `→ <status>` in a comment,
at the end of its last line or in the comment line right after it (`# → 201 {"id": ...}`), in
the order they run; the test compares the statuses the server answered with these.  Variables a
block sets (`RID=$(curl ...)`) stay for the document's next blocks, as in one terminal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.slow  # one gunicorn and a shell per block: not in make test-fast

BASE_DIR = Path(settings.BASE_DIR)
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(BASE_DIR)) for p in (BASE_DIR / "docs").glob("*.md"))]
SHELL = frozenset({"sh", "bash", "console", "shell"})
RUN = SHELL | {"python"}
FENCE = re.compile(r"^```(\S*)\s*$")
SKIP = re.compile(r"^<!-- docs-test: skip \((?P<reason>.+)\) -->$")
STATUS = re.compile(r"→ (\d{3})\b")
PLACEHOLDER_URL = "http://127.0.0.1:8000"
PLACEHOLDER_KEY = "bm_..."

# A block doing one of these must carry a skip marker: it is never run by accident.
MUST_SKIP = re.compile(r"(^|[\s;&|(])(make|pip|apt-get|systemctl|gunicorn|celery|litellm --)\s|run_embedded")

# Exactly the blocks that do not run, by document and first line, and why (the marker's reason).
SKIPPED = {
    ("README.md", "make run    # sets up .venv, migrates, loads prices and demo data, starts web + worker + beat; "
                  "prints URL and login"): "starts the service and runs the whole suite",
    ("README.md", ".venv/bin/python manage.py load_prices ./model_prices.json  # or a newer file / URL"):
        "needs your own price file",
    ("README.md", "export BM=http://127.0.0.1:8000 KEY=bm_...   # your server and one of its projects' API keys"):
        "the reader's own server and key; the test exports its own",
    ("README.md", "from budget_client.litellm import BudgetGuard, Client"): "calls a model",
    ("README.md", "DATABASE_URL=postgres://postgres@127.0.0.1:5432/budgets REDIS_URL=redis://127.0.0.1:6379/0 "
                  "make test"): "runs the whole suite",
    ("docs/api.md", "export BM=http://127.0.0.1:8000"): "the reader's own server and key; the test exports its own",
    ("docs/clients.md", "pip install ./clients/python            # or: pip install -e ./clients/python"):
        "installs into the reader's environment",
    ("docs/clients.md", "from decimal import Decimal"): "records `response`, a model's reply",
    ("docs/clients.md", "from budget_client import BudgetExceeded"): "calls a model",
    ("docs/clients.md", "from budget_client import BudgetManager          # instead of: from litellm import "
                        "BudgetManager"): "records `response`, a model's reply",
    ("docs/clients.md", "import litellm"): "calls a model",
    ("docs/clients.md", 'guard = BudgetGuard(Client("http://127.0.0.1:8000", "bm_..."), fallback=True).install()'):
        "calls a model",
    ("docs/clients.md", "from budget_client.litellm import BudgetExceededError, BudgetGuard, Client"):
        "calls a model",
    ("docs/clients.md", "pip install './clients/python[proxy]'          # the client and the LiteLLM Proxy"):
        "starts a LiteLLM Proxy, which calls a model",
    ("docs/console.md", "apt-get install -y chromium                     # once; Playwright's own browser "
                        "download is not used"): "installs a system package",
    ("docs/core.md", "from budgets.manager import BudgetManager"):
        "runs inside the service, in a shell or a task, and records `response`, a model's reply",
    ("docs/operations.md", "make run                          # = .venv/bin/python manage.py run_embedded"):
        "starts the service until Ctrl-C",
    ("docs/operations.md", "python manage.py migrate                      # once per deploy, before the new code "
                           "serves"): "production processes that run until stopped",
}


@dataclass(frozen=True)
class Block:
    document: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    skip: str | None  # the marker's reason

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0]

    def __str__(self) -> str:
        return f"{self.document}:{self.line}"


def blocks(document: str) -> list[Block]:
    lines = (BASE_DIR / document).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = SKIP.match(lines[i - 1]) if i else None
        found.append(Block(document, i + 1, fence.group(1), "\n".join(lines[i + 1:end]),
                           marker.group("reason") if marker else None))
        i = end + 1
    return found


def commands(text: str) -> list[str]:
    """The block's command lines, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def curl_count(text: str) -> int:
    return sum(len(re.findall(r"(?:^|[\s;(|&])curl\s", line.split(" # ")[0])) for line in commands(text))


# --- the documents themselves ----------------------------------------------------------------------

def test_every_fence_names_its_language_so_no_command_block_escapes_the_test():
    untagged = [str(b) for doc in DOCUMENTS for b in blocks(doc) if not b.lang]
    assert untagged == []


def test_the_skipped_blocks_are_exactly_the_listed_ones_each_with_its_reason():
    skipped = {(b.document, b.first_line): b.skip for doc in DOCUMENTS for b in blocks(doc) if b.skip}
    assert skipped == SKIPPED
    markers = [b for doc in DOCUMENTS for b in blocks(doc) if b.skip and b.lang not in RUN]
    assert markers == []  # a marker before a block that would not run anyway is a mistake


def test_no_block_that_installs_or_starts_services_runs_unmarked():
    unmarked = [f"{b}: {line}" for doc in DOCUMENTS for b in blocks(doc) if b.lang in SHELL and not b.skip
                for line in commands(b.text) if MUST_SKIP.search(line.split(" # ")[0])]
    assert unmarked == []


def test_every_curl_in_a_block_that_runs_documents_its_status():
    undocumented = [
        f"{b}: {curl_count(b.text)} curl, {len(STATUS.findall(b.text))} `# → status`"
        for doc in DOCUMENTS for b in blocks(doc)
        if b.lang in SHELL and not b.skip and curl_count(b.text) != len(STATUS.findall(b.text))
    ]
    assert undocumented == []


@pytest.mark.django_db
def test_the_console_hint_for_an_empty_project_uses_the_installable_client(client, django_user_model):
    from budgets import services

    owner = django_user_model.objects.create_user("owner", password="pw")
    project = services.project_create(name="empty", owner=owner)
    client.force_login(owner)

    page = client.get(f"/projects/{project.pk}/").content.decode()

    assert "No spend yet" in page
    assert "from budget_client import Client" in page
    assert "BudgetManager(" not in page  # the in-service class cannot be imported outside the service


# --- running them ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A Python process that imports the slow modules once (LiteLLM, Django), then runs the code it is
# sent, one JSON string a line, each in a fresh namespace, and answers one `@@{json}` line a run.
RUNNER = r"""
import contextlib, io, json, sys, traceback
for module in sys.argv[1:]:
    __import__(module)
    if module == "django":
        sys.modules["django"].setup()
for line in sys.stdin:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            exec(compile(json.loads(line), "<block>", "exec"), {"__name__": "__main__"})
        result = {"ok": True, "output": out.getvalue()}
    except BaseException:
        result = {"ok": False, "output": out.getvalue() + traceback.format_exc()}
    sys.__stdout__.write("@@" + json.dumps(result) + "\n")
    sys.__stdout__.flush()
"""


class Runner:
    def __init__(self, env: dict[str, str], log: Path, *preload: str) -> None:
        self.log = log.open("w")
        self.process = subprocess.Popen([sys.executable, "-c", RUNNER, *preload], cwd=BASE_DIR, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def run(self, code: str) -> tuple[bool, str]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(code) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith("@@"):
                result = json.loads(line[2:])
                return result["ok"], result["output"]
        raise AssertionError(f"the runner stopped (exit code {self.process.wait()})")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(2)
        except subprocess.TimeoutExpired:  # a client's background thread (LiteLLM's saves) may linger
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@dataclass
class Server:
    url: str
    env: dict[str, str]
    tmp: Path
    django: Runner  # for the test's own setup: a new project and key
    python: Runner  # for the documents' Python blocks

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def fresh_project(self) -> str:
        """Rename the last document's `acme`, create a new one; its API key."""
        ok, output = self.django.run(FRESH_PROJECT)
        assert ok, output
        return output.strip().splitlines()[-1]


FRESH_PROJECT = """
from budgets import services
from budgets.models import Project
for old in Project.objects.filter(name="acme"):
    Project.objects.filter(pk=old.pk).update(name=f"acme-before-{old.pk}")
actor = services.actor_for_system("test_docs")
project = services.project_create(name="acme", actor=actor)
print(services.api_key_create(project=project, name="docs", actor=actor)[1])
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("docs")
    (tmp / "var").mkdir()
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(DJANGO_SETTINGS_MODULE="budgetsite.settings", VAR_DIR=str(tmp / "var"), PYTHONUNBUFFERED="1",
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", LITELLM_LOCAL_MODEL_COST_MAP="True")
    port = free_port()
    # The runners import while the database migrates.
    server = Server(f"http://127.0.0.1:{port}", env, tmp, Runner(env, tmp / "django.log", "django"),
                    Runner(env, tmp / "python.log", "litellm", "budget_client"))
    server.manage("migrate", "--verbosity", "0")
    log = (tmp / "gunicorn.log").open("w")
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "budgetsite.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--worker-class", "gthread", "--threads", "4"],
        cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/healthz", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                assert web.poll() is None and time.monotonic() < deadline, (tmp / "gunicorn.log").read_text()
                time.sleep(0.2)
        yield server
    finally:
        web.terminate()
        web.wait(30)
        log.close()
        server.django.close()
        server.python.close()


# Like one terminal per document: the variables a block sets (RID=...) are there in the next one.
SHELL_PRELUDE = r"""
__known=" $(compgen -v | tr '\n' ' ') __known "
__keep() { local v; for v in $(compgen -v); do [[ $__known == *" $v "* ]] || declare -p "$v"; done > "$SHELL_STATE"; }
[ -s "$SHELL_STATE" ] && source "$SHELL_STATE"
trap __keep EXIT
set -eo pipefail
curl() {  # the real curl; the answer's status goes to $STATUS_LOG, its body to stdout
    local out
    out=$(command curl -sS -w '\n%{http_code}' "$@")
    printf '%s\n' "${out##*$'\n'}" >> "$STATUS_LOG"
    printf '%s\n' "${out%$'\n'*}"
}
"""


def run_block(server: Server, block: Block, key: str) -> tuple[list[str], str]:
    """Run one block; returns the statuses its curl commands got and its output."""
    status_log = server.tmp / "statuses"
    status_log.write_text("")
    env = {**server.env, "BM": server.url, "KEY": key, "STATUS_LOG": str(status_log),
           "SHELL_STATE": str(server.tmp / f"{block.document.replace('/', '-')}.variables")}
    if block.lang == "python":
        ok, output = server.python.run(block.text.replace(PLACEHOLDER_URL, server.url).replace(PLACEHOLDER_KEY, key))
        assert ok, f"{block} failed:\n{block.text}\n---\n{output}"
        return [], output
    done = subprocess.run(["bash", "-c", SHELL_PRELUDE + block.text], cwd=BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, f"{block} failed (exit code {done.returncode}):\n{block.text}\n---\n{output}"
    return status_log.read_text().split(), output


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq")
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if any(b.lang in RUN and not b.skip for b in blocks(d))])
def test_the_command_blocks_of_a_document_run_in_order_and_answer_the_documented_statuses(server, document):
    key = server.fresh_project()
    ran = []
    for block in blocks(document):
        if block.lang not in RUN or block.skip:
            continue
        assert not (block.lang in SHELL and any(MUST_SKIP.search(c.split(" # ")[0]) for c in commands(block.text))), (
            f"{block} installs or starts services: mark it `<!-- docs-test: skip (why) -->`")
        statuses, output = run_block(server, block, key)
        if block.lang in SHELL:
            assert statuses == STATUS.findall(block.text), f"{block}:\n{block.text}\n---\n{output}"
        ran.append(str(block))
    assert ran  # the parametrization promised at least one
