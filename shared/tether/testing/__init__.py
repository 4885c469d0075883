"""Test doubles shipped with the library, for agent authors' own tests."""
