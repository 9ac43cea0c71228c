"""Independent ground truth for adapter-audit.

``references.paper``: float64 paper formulas, one module per variant.
``references.antipasto3``: an independent torch port of the antipasto3 SVD adapter math.

Nothing under ``references`` may import ``variants`` (a reference that calls the code it
checks proves nothing); ``tests/test_references_paper.py`` enforces this.
"""
