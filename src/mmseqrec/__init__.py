"""mmseqrec: multimodal sequential recommendation enhanced by multimodal LLMs.

Stages (one package each, files between them)::

    prepare -> enrich -> embed -> train -> evaluate -> recommend / serve

See ``docs/architecture.md`` for the file contracts between stages.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
