"""Helpers and fixtures shared by several test modules; fixtures used by one directory only live in that
directory's conftest.py."""
