"""What tests share beyond fixtures, importable by name (tests/ is on sys.path as the root
conftest's directory): `polling.wait_for`, the one polling loop, and `service.start_service`,
the whole service as real processes on loopback."""
