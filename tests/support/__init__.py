"""Test support: realistic fixtures and a way to run the real server with a test requester."""
