"""HTTP routes: thin handlers that validate and hand over to the proxy or cache."""
