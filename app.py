"""The web app, for ``flask --app app run`` and ``gunicorn app:app``; settings come from the
``CHEST_CT_*`` environment variables (see README, "Serving")."""

from chest_ct_classifier.serving import create_app

app = create_app()
