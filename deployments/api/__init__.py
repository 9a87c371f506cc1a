"""The HTTP edge: the ingress deployment (`ingress`), its FastAPI app (`http`), one router per
concern (`generation`, `embeddings`, `documents`, `admin`), what it serves (`catalog`), and
OpenAI error JSON (`errors`); keys, limits and admission in front of every route (`guard`,
with what it refuses by itself in `refusal`), the body ceiling for Ray's own HTTP proxy
(`proxy_body_limit`), and the launcher of Ray's HAProxy in front of it all (`haproxy_guard`)."""
