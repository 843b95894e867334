"""The console in a real browser: Debian's Chromium driven by Playwright against the live test server.

Every page is opened, every chart must have been drawn by Plotly (an svg with data points),
the forms work, and the browser never asks anything of another host (no CDN). A screenshot
of each page goes to test-artifacts/screenshots/.

Skipped when /usr/bin/chromium is missing, unless BROWSER_TESTS=required (CI), which fails instead.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import Alert, ApiKey, CostEvent, Project, UserBudget

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(settings.BASE_DIR) / "test-artifacts" / "screenshots"
PASSWORD = "pw-browser-123456"
CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(
    e.violatedDirective + " " + (e.blockedURI || "inline") + " " + e.sourceFile + ":" + e.lineNumber);
});
"""


def _chromium_or_skip() -> None:
    problem = None
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "Playwright is not installed (pip install -r requirements-test.txt)"
    if problem is None:
        return
    if os.environ.get("BROWSER_TESTS") == "required":
        pytest.fail(f"BROWSER_TESTS=required but {problem}")
    pytest.skip(f"{problem}; set BROWSER_TESTS=required to fail instead of skipping")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code, so Django's async-safety guard is lifted for this module only.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class Session:
    """A browser tab on the live server that remembers every URL it requested."""

    def __init__(self, browser, base_url: str, *, width: int = 1280, height: int = 900) -> None:
        self.base_url = base_url
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        # What the Content-Security-Policy blocked: Chromium says it in the console, and the page
        # gets a securitypolicyviolation event (recorded by a script the policy does not govern).
        self.page.on("console", self._console)
        self.page.add_init_script(CSP_LISTENER)

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text:
            self.errors.append(f"console: {message.text}")

    def csp_violations(self) -> list[str]:
        return self.page.evaluate("window.__cspViolations || []")

    def open(self, path: str) -> None:
        response = self.page.goto(self.base_url + path)
        assert response is not None and response.status == 200, f"{path}: {response and response.status}"
        self.page.wait_for_load_state("load")

    def login(self, username: str) -> None:
        self.open(reverse("login"))
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(self.base_url + reverse("project_list"))

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def foreign_requests(self) -> list[str]:
        server = urlsplit(self.base_url).netloc
        return [url for url in self.requests
                if not url.startswith(("data:", "blob:", "about:")) and urlsplit(url).netloc != server]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, live_server) -> Iterator:
    """Logged-in tabs by role (`tab("owner")`): each checked on close for outside requests and JS errors."""
    tabs: list[Session] = []

    def make(role: str) -> Session:
        session = Session(browser, live_server.url)
        session.login(f"{role}-1")
        tabs.append(session)
        return session

    yield make
    for session in tabs:
        session.close()
        assert session.foreign_requests() == [], "the browser fetched something from outside the test server"
        assert session.errors == [], f"JavaScript errors: {session.errors}"


@pytest.fixture
def session(browser, live_server) -> Iterator[Session]:
    tab = Session(browser, live_server.url)
    yield tab
    tab.close()
    assert tab.foreign_requests() == [], "the browser fetched something from outside the test server"
    assert tab.errors == [], f"JavaScript errors: {tab.errors}"


@pytest.fixture
def member(db) -> object:
    return get_user_model().objects.create_user("mia", password=PASSWORD)


@pytest.fixture
def demo(member) -> Project:
    """A seeded demo project (the seed_demo command, small) that `member` belongs to."""
    call_command("seed_demo", "--users", "20", "--days", "14", "--events", "800", stdout=io.StringIO())
    project = Project.objects.get(name="demo")
    project.members.add(member)
    return project


def assert_charts_drawn(session: Session, expected: int) -> None:
    """Each chart div became a Plotly plot with an svg and data points (bars, markers or slices)."""
    page = session.page
    charts = page.locator("[data-chart]")
    assert charts.count() == expected
    for i in range(expected):
        chart = charts.nth(i)
        chart.locator("svg.main-svg").first.wait_for(state="attached")
        assert "js-plotly-plot" in (chart.get_attribute("class") or "")
        assert chart.locator(".point, .slice").count() > 0, f"chart {chart.get_attribute('id')} has no data points"


def test_every_page_draws_its_charts_from_the_test_server_only(session, demo):
    session.open(reverse("login"))
    session.screenshot("login")
    session.login("mia")
    pk = demo.pk
    heavy = UserBudget.objects.filter(project=demo).order_by("-current_spend").first()

    session.open(reverse("project_list"))
    assert session.page.locator("#projects-table tbody tr").count() == 1
    session.screenshot("projects")

    session.open(reverse("project_overview", args=[pk]))
    assert_charts_drawn(session, 3)
    assert session.page.locator("#top-users tbody tr").count() > 0
    session.screenshot("overview")

    session.open(reverse("user_list", args=[pk]) + "?sort=-spend")
    assert session.page.locator("#users-table tbody tr").count() == 20
    assert session.page.locator("#users-table tbody tr").first.locator("a").inner_text() == heavy.user_id
    session.screenshot("users")

    # A user with spend this period and finished periods has all three charts.
    # (On a Monday morning the seed's daily and weekly budgets have no spend yet: record some.)
    with_history = UserBudget.objects.filter(project=demo, periods__isnull=False).distinct().order_by("user_id").first()
    services.cost_record(project=demo, user_id=with_history.user_id, usage=Usage("gpt-4o-mini", 1000, 500),
                         source=CostEvent.Source.API)
    session.open(reverse("user_detail", args=[pk, with_history.user_id]))
    assert_charts_drawn(session, 3)
    assert session.page.locator("#ledger tbody tr").count() > 0
    session.screenshot("user-detail")

    session.open(reverse("model_list", args=[pk]))
    assert_charts_drawn(session, 2)
    assert session.page.locator("#models-table tbody tr").count() >= 2
    session.screenshot("models")

    session.open(reverse("key_list", args=[pk]))
    assert session.page.locator("#keys-table tbody tr").count() == 1  # the demo key
    session.screenshot("keys")

    session.open(reverse("project_settings", args=[pk]))
    session.screenshot("settings")

    assert any(url.endswith("/static/vendor/plotly/plotly.min.js") for url in session.requests)
    assert any(url.endswith("/static/bootstrap/css/bootstrap.min.css") for url in session.requests)


def test_pages_fit_a_narrow_screen(browser, live_server, demo):
    phone = Session(browser, live_server.url, width=390, height=844)
    try:
        phone.login("mia")
        for name, path in [("overview", reverse("project_overview", args=[demo.pk])),
                           ("users", reverse("user_list", args=[demo.pk]))]:
            phone.open(path)
            # Nothing wider than the screen: wide tables scroll inside their own box.
            assert phone.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), name
            assert phone.page.locator(".navbar-toggler").is_visible()
            if name == "overview":
                assert_charts_drawn(phone, 3)
            phone.screenshot(f"{name}-narrow")
        assert phone.foreign_requests() == []
    finally:
        phone.close()


def test_a_budget_is_created_edited_and_reset_through_the_forms(session, member):
    project = services.project_create(name="acme")
    project.members.add(member)
    session.login("mia")
    page = session.page

    session.open(reverse("user_list", args=[project.pk]))
    page.fill("#id_user_id", "carol@example.com")
    page.fill("#id_total_budget", "12.5")
    page.select_option("#id_duration", "weekly")
    page.click("#create-budget-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/users/carol@example\.com$"))
    budget = UserBudget.objects.get(project=project, user_id="carol@example.com")
    assert (budget.total_budget, budget.duration) == (Decimal("12.5"), "weekly")

    page.fill("#edit-budget-form #id_total_budget", "-3")
    page.click("#edit-budget-form button[type=submit]")
    assert page.locator("#edit-budget-form .invalid-feedback").count() > 0
    page.fill("#edit-budget-form #id_total_budget", "40")
    page.select_option("#edit-budget-form #id_duration", "monthly")
    page.click("#edit-budget-form button[type=submit]")
    page.wait_for_selector(".alert-success")
    assert page.locator("#user-budget").inner_text() == "$40.00"
    budget.refresh_from_db()
    assert (budget.total_budget, budget.duration) == (Decimal(40), "monthly")

    services.cost_record(project=project, user_id="carol@example.com", usage=Usage("gpt-4o", 10_000, 2_000),
                         source="api")
    session.open(reverse("user_detail", args=[project.pk, "carol@example.com"]))
    assert page.locator("#user-spend").inner_text() == "$0.0450"  # three significant digits below a dollar
    assert_charts_drawn(session, 2)
    session.screenshot("user-detail-before-reset")

    page.click("#reset-form button[type=submit]")
    page.locator("#confirm-dialog [data-confirm-ok]").click()
    page.wait_for_selector(".alert-success")
    assert page.locator("#user-spend").inner_text() == "$0.00"
    budget.refresh_from_db()
    assert budget.current_spend == 0
    assert CostEvent.objects.filter(project=project).count() == 1  # the ledger keeps the call


def test_a_key_is_created_shown_once_and_revoked(session, member):
    project = services.project_create(name="acme")
    project.members.add(member)
    session.login("mia")
    page = session.page

    session.open(reverse("key_list", args=[project.pk]))
    page.fill("#id_name", "production backend")
    page.click("#create-key-form button[type=submit]")
    raw = page.locator("#new-key-value").inner_text().strip()
    assert services.api_key_authenticate(raw) is not None
    session.screenshot("keys-new-key")

    page.locator("#keys-table form button").click()
    page.locator("#confirm-dialog [data-confirm-ok]").click()
    page.wait_for_selector(".alert-success")
    assert "revoked" in page.locator("#keys-table tbody tr").first.inner_text()
    assert page.locator("#new-key-value").count() == 0
    assert ApiKey.objects.get(project=project).revoked_at is not None
    assert services.api_key_authenticate(raw) is None


def test_the_csv_export_downloads_the_users_ledger(session, demo, tmp_path):
    session.login("mia")
    user_id = UserBudget.objects.filter(project=demo).order_by("-current_spend").values_list("user_id", flat=True)[0]
    session.open(reverse("user_detail", args=[demo.pk, user_id]))

    with session.page.expect_download() as download:
        session.page.click("a:has-text('Export CSV')")
    path = tmp_path / "ledger.csv"
    download.value.save_as(path)

    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    events = CostEvent.objects.filter(project=demo, user_id=user_id).order_by("created_at", "id")
    assert len(rows) == events.count() > 0
    assert {row["user"] for row in rows} == {user_id}
    assert [(int(r["event_id"]), Decimal(r["cost_usd"]), r["model"]) for r in rows] == [
        (e.pk, e.cost, e.model) for e in events]


LINK = '<a href="https://evil.example">x</a>'
IMAGE = "<img src=x onerror=alert(1)>"


def test_html_in_user_ids_and_model_names_stays_text_in_every_chart(session, member):
    project = services.project_create(name="acme")
    project.members.add(member)
    for user_id, model in [(LINK, IMAGE), (IMAGE, LINK), ("plain", LINK)]:
        # $1.25 of $1: past the 80 % and 100 % thresholds, so the alert history names them too.
        services.budget_set(project=project, user_id=user_id, total_budget=Decimal(1), actor="test")
        services.cost_record(project=project, user_id=user_id, usage=Usage(model, 0, 0), cost=Decimal("1.25"),
                             source=CostEvent.Source.API)
    dialogs: list[str] = []
    session.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    session.login("mia")
    page = session.page
    pages = [
        (reverse("project_overview", args=[project.pk]), 3),
        (reverse("user_list", args=[project.pk]), None),
        (reverse("user_detail", args=[project.pk, LINK]), 2),
        (reverse("user_detail", args=[project.pk, IMAGE]), 2),
        (reverse("model_list", args=[project.pk]), 2),
        # Every other page a user id or model name can reach.
        (reverse("project_list"), None),
        (reverse("audit_log", args=[project.pk]), None),
        (reverse("alert_history", args=[project.pk]), None),
        (reverse("project_periods", args=[project.pk]), None),
        (reverse("key_list", args=[project.pk]), None),
        (reverse("project_settings", args=[project.pk]), None),
        (reverse("member_list", args=[project.pk]), None),
    ]

    for path, charts in pages:
        session.open(path)
        if charts is not None:
            assert_charts_drawn(session, charts)
        # Hovering every data point draws every tooltip, where the names are shown again.
        for point in page.locator("[data-chart] .point path, [data-chart] .slice path").all():
            box = point.bounding_box() or {}
            if box.get("width", 0) > 1 and box.get("height", 0) > 1:  # a zero amount draws no bar to hover
                point.hover(force=True, timeout=2000)
                page.wait_for_timeout(20)
        assert page.locator('a[href="https://evil.example"]').count() == 0, path
        assert page.locator("[data-chart] svg a").count() == 0, path
        assert page.locator('img[src="x"]').count() == 0, path
        # The names are shown as the text they are.
        chart_text = " ".join(page.locator("[data-chart]").all_text_contents())
        if charts is not None:
            assert "evil.example" in chart_text or "onerror" in chart_text, path

    assert dialogs == []
    assert Alert.objects.filter(project=project, user_id=IMAGE).exists()  # the alert page had it to show


def test_every_page_runs_under_the_content_security_policy(session, demo, member):
    """Charts, forms, Django admin and Swagger UI work with the strict policy; nothing is blocked."""
    member.is_staff = member.is_superuser = True
    member.save()
    session.login("mia")
    pk = demo.pk
    user_id = UserBudget.objects.filter(project=demo).order_by("-current_spend").values_list("user_id", flat=True)[0]
    charts = [
        (reverse("project_overview", args=[pk]), 3),
        (reverse("user_detail", args=[pk, user_id]), None),
        (reverse("model_list", args=[pk]), 2),
        (reverse("project_periods", args=[pk]), None),
    ]
    others = [reverse(name, args=[pk]) for name in (
        "user_list", "key_list", "project_settings", "member_list", "audit_log", "alert_history", "budget_import",
        "project_delete")] + [reverse("project_list"), reverse("project_new")]
    budget = UserBudget.objects.filter(project=demo).first()
    admin = [reverse("admin:index"), reverse("admin:budgets_userbudget_changelist"),
             reverse("admin:budgets_userbudget_change", args=[budget.pk])]

    for path, expected in charts + [(p, None) for p in others + admin]:
        response = session.page.goto(session.base_url + path)
        assert response is not None and response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        session.page.wait_for_load_state("load")
        if expected is not None:
            assert_charts_drawn(session, expected)
        else:
            charts_here = session.page.locator("[data-chart]").count()
            if charts_here:
                assert_charts_drawn(session, charts_here)
        assert session.csp_violations() == [], (path, session.csp_violations())

    session.open("/api/v1/docs")
    session.page.locator(".opblock").first.wait_for()  # Swagger UI drew the operations
    assert session.csp_violations() == []
    session.screenshot("api-docs")


OVERLAPS = """
(chart) => {
  const box = (el) => el.getBoundingClientRect();
  const meets = (a, b) => a.width > 0 && b.width > 0 && a.left < b.right - 1 && b.left < a.right - 1
                          && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  const name = (el) => el.textContent.trim();
  // An entry's name (its text, not the click target behind it, which is as wide as the column).
  const entries = [...chart.querySelectorAll(".legend .traces .legendtext")];
  const axis = [...chart.querySelectorAll(".xtick text, .ytick text, .g-xtitle text, .g-ytitle text")];
  const found = [];
  entries.forEach((a, i) => entries.slice(i + 1).forEach((b) => {
    if (meets(box(a), box(b))) found.push(name(a) + " / " + name(b));
  }));
  entries.forEach((a) => axis.forEach((b) => {
    if (meets(box(a), box(b))) found.push(name(a) + " / axis " + name(b));
  }));
  // Every entry inside the chart: a legend cut off at the bottom is not laid out either.
  const frame = box(chart);
  entries.forEach((a) => { if (box(a).bottom > frame.bottom + 1) found.push(name(a) + " below the chart"); });
  return found;
}
"""


@pytest.mark.parametrize("width", [390, 1280, 1920])
def test_chart_legends_overlap_neither_each_other_nor_the_axes(browser, live_server, demo, width):
    tab = Session(browser, live_server.url, width=width, height=1000)
    try:
        tab.login("mia")
        for name in ("model_list", "project_overview"):
            tab.open(reverse(name, args=[demo.pk]))
            charts = tab.page.locator("[data-chart]")
            assert_charts_drawn(tab, charts.count())
            for i in range(charts.count()):
                chart = charts.nth(i)
                assert chart.evaluate(OVERLAPS) == [], f"{name} {chart.get_attribute('id')} at {width}px"
            tab.screenshot(f"{name}-legends-{width}")
        # Narrowed after drawing (a turned tablet): the legend is laid out again for the new width.
        tab.page.set_viewport_size({"width": width // 2, "height": 1000})
        tab.page.wait_for_timeout(600)
        for chart in tab.page.locator("[data-chart]").all():
            assert chart.evaluate(OVERLAPS) == [], f"overview {chart.get_attribute('id')} at {width // 2}px"
        assert tab.errors == []
    finally:
        tab.close()
