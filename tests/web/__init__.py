"""Web UI tests: static serving, and the real app in headless Chromium."""
