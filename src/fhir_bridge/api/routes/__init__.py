"""API routers, one module per resource of the API."""
