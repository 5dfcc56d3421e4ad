"""The web app, for ``gunicorn app:app`` (the image, ``make serve``) and ``python app.py``
(Flask's own server on port 8080 as in the original project: for trying it out, not for
production); settings come from the ``CHEST_CT_*`` environment variables (docs/serving.md)."""

import os

from chest_ct_classifier.serving import create_app

app = create_app()

if __name__ == "__main__":
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")), threaded=True)
