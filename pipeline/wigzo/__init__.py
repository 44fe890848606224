"""Everything about Wigzo: the pure mapping and delivery policy, and the HTTP client behind one transport seam."""
