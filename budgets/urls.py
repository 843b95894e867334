"""The console's pages: login, projects, and each project's pages.

A user id may contain "/" (it is the caller's own id), so it comes last in every route.
Routes that change something accept POST only.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(template_name="registration/login.html",
                                                redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),  # POST only (Django 5+)
    # The one-time set-password link a new member receives (Django's password reset confirm).
    path("reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(
        template_name="registration/set_password.html"), name="password_reset_confirm"),
    path("reset/done/", auth_views.PasswordResetCompleteView.as_view(
        template_name="registration/set_password_done.html"), name="password_reset_complete"),
    # An invitation's link (a signed token): shown to anyone who has it, accepted by the invited person.
    path("invitations/<str:token>/", views.invitation_accept, name="invitation_accept"),
    path("", views.project_list, name="project_list"),
    path("projects/new/", views.project_new, name="project_new"),
    path("projects/<int:project_id>/", views.project_overview, name="project_overview"),
    path("projects/<int:project_id>/users/", views.user_list, name="user_list"),
    path("projects/<int:project_id>/budget/new/", views.budget_create, name="budget_create"),
    path("projects/<int:project_id>/bulk/", views.budget_bulk, name="budget_bulk"),
    path("projects/<int:project_id>/budget/import/", views.budget_import, name="budget_import"),
    path("projects/<int:project_id>/users/<path:user_id>", views.user_detail, name="user_detail"),
    path("projects/<int:project_id>/budget/edit/<path:user_id>", views.budget_edit, name="budget_edit"),
    path("projects/<int:project_id>/budget/reset/<path:user_id>", views.budget_reset, name="budget_reset"),
    path("projects/<int:project_id>/budget/delete/<path:user_id>", views.budget_delete, name="budget_delete"),
    path("projects/<int:project_id>/models/", views.model_list, name="model_list"),
    path("projects/<int:project_id>/keys/", views.key_list, name="key_list"),
    path("projects/<int:project_id>/keys/new/", views.key_create, name="key_create"),
    path("projects/<int:project_id>/keys/<int:key_id>/revoke/", views.key_revoke, name="key_revoke"),
    path("projects/<int:project_id>/export.csv", views.export_csv, name="export_csv"),
    path("projects/<int:project_id>/settings/", views.project_settings, name="project_settings"),
    path("projects/<int:project_id>/settings/project/", views.project_settings_save, name="project_settings_save"),
    path("projects/<int:project_id>/settings/alerts/", views.alert_settings_save, name="alert_settings_save"),
    path("projects/<int:project_id>/periods/", views.project_periods, name="project_periods"),
    path("projects/<int:project_id>/audit/", views.audit_log, name="audit_log"),
    path("projects/<int:project_id>/alerts/", views.alert_history, name="alert_history"),
    path("projects/<int:project_id>/alerts/test-webhook/", views.webhook_test, name="webhook_test"),
    path("projects/<int:project_id>/delete/", views.project_delete, name="project_delete"),
    path("projects/<int:project_id>/members/", views.member_list, name="member_list"),
    path("projects/<int:project_id>/members/invite/", views.member_invite, name="member_invite"),
    path("projects/<int:project_id>/invitations/<int:invitation_id>/revoke/", views.invitation_revoke,
         name="invitation_revoke"),
    path("projects/<int:project_id>/members/<int:membership_id>/role/", views.member_role, name="member_role"),
    path("projects/<int:project_id>/members/<int:membership_id>/remove/", views.member_remove,
         name="member_remove"),
]
