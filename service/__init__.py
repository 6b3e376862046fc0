"""sharpmix service: the HTTP API and the job store (the command line is ``sharpmix.cli``)."""
