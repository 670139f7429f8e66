"""The audit of a dataset (`python -m fakedetect.audit`): `dataset.py` runs it (sizes, statistics, duplicates) and
writes audit.json and audit.md, `shortcuts.py` finds file attributes that alone tell the classes apart, and
`figures.py` draws the sizes."""
