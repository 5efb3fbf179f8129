"""The updater: the curated knowledge store, the edit queue and their command line.

Importing this package loads nothing: construct ``KnowledgeStore`` and ``EditQueue``
explicitly (see ``updater.store.knowledge`` and ``updater.queue``).
"""
