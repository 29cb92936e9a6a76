"""raysight on Ray Serve: one deployment per model behind an OpenAI-compatible FastAPI ingress.

``build_app(ServeConfig)`` (serve_app.app) returns the Serve application; ``raysight serve``
(serve_app.launch) starts it for the common case; ``serve_app/config.yaml`` deploys it with
``serve run``.
"""
