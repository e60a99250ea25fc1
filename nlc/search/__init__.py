"""Architecture search: search spaces written in the spec, and `nlc search`."""
