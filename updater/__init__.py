"""The updater: the curated store, the detector, the edit queue, the apply step and the correction intake, with their CLI.

Importing this package loads nothing: construct ``KnowledgeStore`` and ``EditQueue``
explicitly (see ``updater.store.knowledge`` and ``updater.queue``).
"""
