"""postbell's SQL: numbered migrations and named queries. Shipped in the wheel as the
data package ``postbell_sql`` (see pyproject.toml); read with importlib.resources."""
