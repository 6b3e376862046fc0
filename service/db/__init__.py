"""Database layer: models, engine and sessions, migrations, and the operations the API and the
workers call. Database errors become :mod:`service.errors` domain errors here, never further up."""
