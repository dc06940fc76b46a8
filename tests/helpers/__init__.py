"""Helpers the test suites share, importable as `helpers.<module>` (tests/ is on pytest's pythonpath).

Plain functions and classes live here; pytest fixtures live in the conftest.py of the folder that
needs them (tests/conftest.py for the ones several folders use), built from these helpers.
"""
