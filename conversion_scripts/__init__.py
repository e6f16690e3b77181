"""Conversion scripts (installed as `uniflow_hf.conversion_scripts`; each runs as `python -m` or as a file)."""
