"""The HTTP edge: the ingress deployment (`ingress`), its FastAPI app (`http`), one router per
concern (`generation`, `embeddings`, `documents`, `admin`), what it serves (`catalog`), and
OpenAI error JSON (`errors`)."""
