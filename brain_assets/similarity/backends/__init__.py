"""Vector storage adapters: sklearn (exact numpy), qdrant, milvus, lancedb, pinecone."""
