"""The console's pages: login, projects, and each project's pages.

A user id may contain "/" (it is the caller's own id), so it comes last in every route. A team's page is
teams/<name>/ and the team form posts to teams/ itself, so that no team name is taken by another route.
Routes that change something accept POST only.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from .views.auth import ConsoleLoginView
from .views.bulk import budget_bulk, budget_import
from .views.export import export_csv
from .views.grants import grant_detail, grant_revoke
from .views.history import alert_history, audit_log, slack_test, webhook_test
from .views.invitations import invitation_accept
from .views.keys import key_create, key_list, key_revoke
from .views.limit_requests import limit_raise_new, limit_raise_remove, request_decide, request_list, request_new
from .views.limits import limit_edit, limit_list, limit_new, limit_remove
from .views.members import invitation_revoke, member_invite, member_list, member_remove, member_role
from .views.models_page import model_list
from .views.periods import project_periods
from .views.project_manage import project_delete, project_new
from .views.project_settings import alert_settings_save, fallbacks_save, project_settings, project_settings_save
from .views.projects import project_list, project_overview
from .views.teams import team_detail, team_grant_new, team_list, team_remove
from .views.users import (
    budget_create,
    budget_delete,
    budget_edit,
    budget_reset,
    user_detail,
    user_grant_new,
    user_list,
)

urlpatterns = [
    # Password login (PASSWORD_LOGIN) and the single sign-on button (OIDC_ISSUER): views/auth.py.
    path("login/", ConsoleLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),  # POST only (Django 5+)
    # The one-time set-password link a new member receives (Django's password reset confirm).
    path("reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(
        template_name="registration/set_password.html"), name="password_reset_confirm"),
    path("reset/done/", auth_views.PasswordResetCompleteView.as_view(
        template_name="registration/set_password_done.html"), name="password_reset_complete"),
    # An invitation's link (a signed token): shown to anyone who has it, accepted by the invited person.
    path("invitations/<str:token>/", invitation_accept, name="invitation_accept"),
    path("", project_list, name="project_list"),
    path("projects/new/", project_new, name="project_new"),
    path("projects/<int:project_id>/", project_overview, name="project_overview"),
    path("projects/<int:project_id>/users/", user_list, name="user_list"),
    path("projects/<int:project_id>/budget/new/", budget_create, name="budget_create"),
    path("projects/<int:project_id>/bulk/", budget_bulk, name="budget_bulk"),
    path("projects/<int:project_id>/budget/import/", budget_import, name="budget_import"),
    path("projects/<int:project_id>/users/<path:user_id>", user_detail, name="user_detail"),
    path("projects/<int:project_id>/budget/edit/<path:user_id>", budget_edit, name="budget_edit"),
    path("projects/<int:project_id>/budget/reset/<path:user_id>", budget_reset, name="budget_reset"),
    path("projects/<int:project_id>/budget/delete/<path:user_id>", budget_delete, name="budget_delete"),
    path("projects/<int:project_id>/models/", model_list, name="model_list"),
    path("projects/<int:project_id>/limits/", limit_list, name="limit_list"),
    path("projects/<int:project_id>/limits/new/", limit_new, name="limit_new"),
    path("projects/<int:project_id>/limits/<int:limit_id>/edit/", limit_edit, name="limit_edit"),
    path("projects/<int:project_id>/limits/<int:limit_id>/delete/", limit_remove, name="limit_remove"),
    path("projects/<int:project_id>/limits/<int:limit_id>/raise/", limit_raise_new, name="limit_raise_new"),
    path("projects/<int:project_id>/limits/<int:limit_id>/raises/<int:increase_id>/end/", limit_raise_remove,
         name="limit_raise_remove"),
    path("projects/<int:project_id>/requests/", request_list, name="limit_requests"),
    path("projects/<int:project_id>/requests/new/", request_new, name="limit_request_new"),
    path("projects/<int:project_id>/requests/<int:request_id>/decide/", request_decide, name="limit_request_decide"),
    # Grants (credits): given from a user's or a team's page; a grant's page lists what it paid.
    path("projects/<int:project_id>/grants/new/user/<path:user_id>", user_grant_new, name="user_grant_new"),
    path("projects/<int:project_id>/grants/new/team/<str:team>/", team_grant_new, name="team_grant_new"),
    path("projects/<int:project_id>/grants/<int:grant_id>/", grant_detail, name="grant_detail"),
    path("projects/<int:project_id>/grants/<int:grant_id>/revoke/", grant_revoke, name="grant_revoke"),
    path("projects/<int:project_id>/teams/", team_list, name="team_list"),
    path("projects/<int:project_id>/teams/<str:team>/", team_detail, name="team_detail"),
    path("projects/<int:project_id>/teams/<str:team>/delete/", team_remove, name="team_remove"),
    path("projects/<int:project_id>/keys/", key_list, name="key_list"),
    path("projects/<int:project_id>/keys/new/", key_create, name="key_create"),
    path("projects/<int:project_id>/keys/<int:key_id>/revoke/", key_revoke, name="key_revoke"),
    path("projects/<int:project_id>/export.csv", export_csv, name="export_csv"),
    path("projects/<int:project_id>/settings/", project_settings, name="project_settings"),
    path("projects/<int:project_id>/settings/project/", project_settings_save, name="project_settings_save"),
    path("projects/<int:project_id>/settings/alerts/", alert_settings_save, name="alert_settings_save"),
    path("projects/<int:project_id>/settings/fallbacks/", fallbacks_save, name="fallbacks_save"),
    path("projects/<int:project_id>/periods/", project_periods, name="project_periods"),
    path("projects/<int:project_id>/audit/", audit_log, name="audit_log"),
    path("projects/<int:project_id>/alerts/", alert_history, name="alert_history"),
    path("projects/<int:project_id>/alerts/test-webhook/", webhook_test, name="webhook_test"),
    path("projects/<int:project_id>/alerts/test-slack/", slack_test, name="slack_test"),
    path("projects/<int:project_id>/delete/", project_delete, name="project_delete"),
    path("projects/<int:project_id>/members/", member_list, name="member_list"),
    path("projects/<int:project_id>/members/invite/", member_invite, name="member_invite"),
    path("projects/<int:project_id>/invitations/<int:invitation_id>/revoke/", invitation_revoke,
         name="invitation_revoke"),
    path("projects/<int:project_id>/members/<int:membership_id>/role/", member_role, name="member_role"),
    path("projects/<int:project_id>/members/<int:membership_id>/remove/", member_remove,
         name="member_remove"),
]
