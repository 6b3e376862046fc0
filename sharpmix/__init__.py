"""The composition root: the entry points that wire the API and the workers together.

``service`` (the API and the database layer) and ``workers`` (the worker loop and the compute
core) never import each other's insides; only this package imports both:

- ``cli``: the ``sharpmix`` command;
- ``embedded``: the API with an in-process worker on one SQLite file;
- ``demo``: ``make demo``, a real sweep over HTTP on generated assets;
- ``assets``: those generated assets (corpora, a tokenizer, a tiny pre-trained model).
"""
