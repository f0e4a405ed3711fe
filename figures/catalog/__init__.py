"""The declared experiments, figures and tables of the thesis, one module per results section.

To add a figure: write (or extend) a module here with ``@experiment`` declarations (each with a small
``synthetic`` table for the tests) and ``@figure``/``@table`` draw functions; list its name in
``paper/README.md``. Modules are imported in the order of ``ORDER``, then any others alphabetically;
that order is the order of the results chapter.
"""

ORDER: tuple[str, ...] = ("theory", "models", "weights", "bounds", "removal", "frontier", "mixture")
