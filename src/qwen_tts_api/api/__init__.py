"""HTTP layer: schemas, routers, errors. Never touches torch."""
