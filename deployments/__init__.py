"""Ray Serve wiring: the app builder (`app`), validated config (`config`), the engine host every
pool runs on (`engine`), the HTTP edge (`api`), each model's front in the ingress (`frontend`),
SLO autoscaling (`autoscaling`) and RAG pipelines (`pipelines`)."""
