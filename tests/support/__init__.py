"""Helpers shared by the tests: servers, processes, fakes and readers, one copy of each.

Tests import them as ``support.<module>`` (pytest puts tests/ on ``sys.path``, as it does for
any rootdir-relative test folder without an ``__init__.py``). Fixtures live in
tests/conftest.py.
"""
