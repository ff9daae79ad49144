"""Storage: the dispatch schema, migrations, engines, bulk writes and the accounting source."""
