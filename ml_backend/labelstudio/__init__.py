"""Everything that speaks to or about Label Studio: label configs, its REST API, its media URLs."""
