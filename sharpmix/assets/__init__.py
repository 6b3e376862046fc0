"""The demo's assets, built on the machine with nothing downloaded.

- ``corpora``: the generated general and arithmetic text;
- ``vocab``: a small byte-level BPE tokenizer trained on it;
- ``demo``: the corpora, the tokenizer and a tiny OLMo-2 model pre-trained on them, written
  under ``SHARPMIX_HOME/demo`` once and reused (``build_demo_assets``).

Nothing is imported here, so ``corpora`` and ``vocab`` load without torch or the data loaders.
"""
