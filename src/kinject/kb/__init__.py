"""The knowledge base: ingest documents, chunk, embed, index, retrieve."""
