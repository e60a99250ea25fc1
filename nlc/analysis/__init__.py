"""Read-only questions about a graph: counts, roofline cost, memory, reports. Never mutates it."""
