"""Test doubles for vendor libraries (pynvml) that the CI machines lack hardware for."""
