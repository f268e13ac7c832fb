"""HTTP operations, one module per resource; importing them registers their routes."""
