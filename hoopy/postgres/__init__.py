"""The PostgreSQL gateway."""
