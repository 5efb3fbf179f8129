"""The curated knowledge store: fact records and their versions (SQLite), the chromadb index, and fact files."""
