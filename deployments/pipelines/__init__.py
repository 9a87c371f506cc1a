"""RAG pipelines served as models: chunking, vector stores, retrieval, prompt assembly."""
