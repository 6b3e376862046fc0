"""sharpmix service: HTTP API, job store and command line."""
