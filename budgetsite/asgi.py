"""ASGI entry point."""

import os

from django.core.asgi import get_asgi_application

from budgetsite.tracing import setup_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budgetsite.settings")
setup_tracing()
application = get_asgi_application()
