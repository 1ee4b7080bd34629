"""Doctest collection of the optional integrations only where their extra is installed
(``pip install -e '.[test]'`` installs both; a plain checkout may not have them)."""

import importlib.util

collect_ignore = [
    path
    for path, package in (
        ("selfnorm/integrations/lightning.py", "lightning"),
        ("selfnorm/integrations/keras.py", "keras"),
    )
    if importlib.util.find_spec(package) is None
]
