"""Fakes of upstream providers, served on loopback sockets by the tests."""
