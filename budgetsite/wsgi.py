"""WSGI entry point (gunicorn budgetsite.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budgetsite.settings")
application = get_wsgi_application()
