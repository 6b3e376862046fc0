"""HTTP API (FastAPI): the only place where domain errors become HTTP status codes.

``main.create_app`` builds the application; ``deps`` holds the dependencies routes declare;
``routes/`` one module per resource; ``schemas`` fills the contract's response models from rows;
``errors`` the mapping from domain errors to responses; ``metrics`` the Prometheus
instrumentation.
"""
